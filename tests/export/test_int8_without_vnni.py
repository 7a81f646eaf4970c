"""The int8 ONNX file computes the integer path's logits exactly on an x86 CPU without VNNI
(AVX2 only), where ONNX Runtime's uint8 x int8 kernels saturate (VPMADDUBSW): the file stores
uint8 x uint8 (netshrink.export.onnx_int8.unsigned_integers). The CPU is emulated by qemu's
user mode (`qemu-x86_64 -cpu Haswell`: AVX2, no AVX-512); only ONNX Runtime runs under it."""

import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import train_on_digits
from netshrink.export.qdq import export_onnx_int8
from netshrink.quant import IntegerModel, QuantConfig, quantize
from netshrink.train import FitConfig

QEMU = shutil.which("qemu-x86_64")

_RUN_ONNX = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
images = np.load(sys.argv[2])
np.save(sys.argv[3], session.run(None, {"input": images})[0])
"""


@pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64", reason="needs qemu-x86_64 (qemu-user)"
)
def test_the_int8_file_is_exact_on_a_cpu_without_vnni(digits, tmp_path):
    # the model of tests/test_deploy.py: with int8 weights its file parted from the integer
    # path on such a CPU (checked: the exact-agreement test failed there before the change)
    trained = train_on_digits(digits, FitConfig(epochs=3, batch_size=64, lr=0.05))
    qmodel = quantize(trained, digits, QuantConfig(ties="even"))
    path = export_onnx_int8(qmodel, tmp_path / "q.onnx", digits.input_shape)
    images = next(iter(digits.loader("test", 200)))[0]
    np.save(tmp_path / "images.npy", images.numpy())
    script = tmp_path / "run_onnx.py"
    script.write_text(_RUN_ONNX)
    command = [QEMU, "-cpu", "Haswell", sys.executable, str(script), str(path)]
    command += [str(tmp_path / "images.npy"), str(tmp_path / "logits.npy")]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    got = np.load(tmp_path / "logits.npy")
    expected = IntegerModel(qmodel).run(images).logits.numpy().astype(np.float32)
    assert np.array_equal(got, expected)

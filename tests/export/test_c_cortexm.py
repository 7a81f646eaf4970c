"""The C export on a Cortex-M target: arm-none-eabi-size's flash and RAM, and the logits of the
program run on qemu's MPS2 boards, equal to the integer path's (netshrink.quant.IntegerModel)."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from netshrink.errors import ConfigError
from netshrink.export import c_cortexm
from netshrink.export.c import export_c, quantize_input
from netshrink.export.c_cortexm import cortex_m_flash_and_ram, run_on_qemu
from netshrink.models import lenet5
from netshrink.quant import IntegerModel, QuantConfig, quantize


def _require(*tools: str) -> None:
    """Skip without the cross tools, except in CI (where .ci/run installs them): fail there."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = {
            "qemu-system-arm" if t.startswith("qemu") else "gcc-arm-none-eabi" for t in missing
        }
        message = f"{', '.join(missing)}: apt-get install -y {' '.join(sorted(packages))}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Wide(nn.Module):
    """A conv, a padded average pool (a floor division) and a linear layer: with 16-bit values
    and a 48-bit accumulator its sums and logits are int64 on a 32-bit CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(3, 2, 1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    torch.manual_seed(0)
    images = torch.randn(32, 1, 28, 28)
    qmodel = quantize(lenet5().eval(), images, QuantConfig())
    export = export_c(qmodel, tmp_path_factory.mktemp("lenet") / "out", (1, 28, 28))
    return qmodel, export, images


def test_flash_and_ram_from_arm_none_eabi_size(lenet, tmp_path):
    _require("arm-none-eabi-gcc", "arm-none-eabi-size")
    _, export, _ = lenet
    sizes = cortex_m_flash_and_ram(export, tmp_path, cpu="cortex-m4")
    assert sizes["flash_bytes"] >= export.weight_bytes > 0
    assert sizes["ram_bytes"] >= export.scratch_bytes > 0
    assert sizes["data"] == 0  # weights are const: nothing is copied from flash to RAM
    m0 = cortex_m_flash_and_ram(export, tmp_path / "m0", cpu="cortex-m0plus")
    assert m0["flash_bytes"] >= export.weight_bytes


def test_qemu_logits_equal_the_integer_path(lenet, tmp_path):
    _require("arm-none-eabi-gcc", "qemu-system-arm")
    qmodel, export, images = lenet
    logits = run_on_qemu(export, quantize_input(images[:8], export), tmp_path)
    reference = IntegerModel(qmodel).run(images[:8]).integers
    assert reference is not None and logits.shape == (8, export.num_classes)
    np.testing.assert_array_equal(logits, reference.numpy())


def test_int64_arithmetic_through_libgcc_on_a_cortex_m0(tmp_path):
    _require("arm-none-eabi-gcc", "qemu-system-arm")
    torch.manual_seed(3)
    images = torch.randn(16, 2, 8, 8)
    config = QuantConfig(weights=16, activations=16, bias=32, accumulator=48)
    qmodel = quantize(Wide().eval(), images, config)
    export = export_c(qmodel, tmp_path / "out", (2, 8, 8))
    assert export.logits_ctype == "int64_t"
    logits = run_on_qemu(export, quantize_input(images[:8], export), tmp_path, board="microbit")
    np.testing.assert_array_equal(logits, IntegerModel(qmodel).run(images[:8]).integers.numpy())
    # the Cortex-M0 has no 64-bit multiply: the program ran libgcc's
    nm = shutil.which("arm-none-eabi-nm")
    if nm is not None:
        symbols = subprocess.run([nm, tmp_path / "program.elf"], capture_output=True, text=True)
        assert "__aeabi_lmul" in symbols.stdout


def test_qemu_timeout_is_a_clear_error(lenet, tmp_path):
    _require("arm-none-eabi-gcc", "qemu-system-arm")
    _, export, images = lenet
    with pytest.raises(RuntimeError, match="did not finish in 0.001 s"):
        run_on_qemu(export, quantize_input(images[:1], export), tmp_path, timeout=0.001)


def test_missing_tools_and_bad_arguments_are_config_errors(lenet, tmp_path, monkeypatch):
    _, export, images = lenet
    with pytest.raises(ConfigError, match="unknown board"):
        run_on_qemu(export, quantize_input(images[:1], export), tmp_path, board="virt")
    with pytest.raises(ConfigError, match="not a Cortex-M CPU"):
        cortex_m_flash_and_ram(export, tmp_path, cpu="-o/tmp/x")
    monkeypatch.setattr(c_cortexm.shutil, "which", lambda tool: None)
    with pytest.raises(ConfigError, match="apt-get install -y gcc-arm-none-eabi"):
        cortex_m_flash_and_ram(export, tmp_path)
    with pytest.raises(ConfigError, match="apt-get install -y qemu-system-arm"):
        run_on_qemu(export, quantize_input(images[:1], export), tmp_path)


def test_sparse_layers_run_on_a_cortex_m3(lenet, tmp_path):
    # the sparse walk (c_sparse) on a 32-bit target: 90% of LeNet-5's weights pruned
    _require("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
    _, dense_export, images = lenet
    model = lenet5().eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_((torch.rand(m.weight.shape) < 0.1).float())
    qmodel = quantize(model, images, QuantConfig())
    export = export_c(qmodel, tmp_path / "out", (1, 28, 28), storage="sparse")
    logits = run_on_qemu(export, quantize_input(images[:8], export), tmp_path / "run")
    np.testing.assert_array_equal(logits, IntegerModel(qmodel).run(images[:8]).integers.numpy())
    sizes = cortex_m_flash_and_ram(export, tmp_path / "m3", cpu="cortex-m3")
    assert sizes["flash_bytes"] < dense_export.weight_bytes / 3

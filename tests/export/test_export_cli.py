"""`netshrink export` end to end: a fixed-point .nsk file to fp32 ONNX, int8 QDQ ONNX and C99,
each checked on the test split; a float model refuses --int8 / --c with one line."""

import json
import re
import shutil

import pytest

from netshrink.cli import main


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    work = tmp_path_factory.mktemp("export_cli")
    argv = ["train", "--model", "lenet300_100", "--data", "digits", "--epochs", "3"]
    assert main(argv + ["--batch-size", "64", "--out", str(work / "base")]) == 0
    quantize = ["quantize", str(work / "base"), "--no-latency", "--out", str(work / "q")]
    assert main(quantize) == 0
    assert main(["pack", str(work / "q"), "-o", str(work / "q.nsk")]) == 0
    return work


def test_export_writes_and_checks_every_target(packed, tmp_path, capsys):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    capsys.readouterr()
    argv = ["export", str(packed / "q.nsk"), "--onnx", str(tmp_path / "m.onnx")]
    argv += ["--int8", str(tmp_path / "m.int8.onnx"), "--c", str(tmp_path / "c")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "top-1 agreement with PyTorch 100.00%, max |diff| 0" in text
    int8 = float(re.search(r"agreement with the integer path ([\d.]+)%", text).group(1))
    assert int8 >= 99.0
    assert "bit-exact with the integer path on 359/359" in text
    # C: bytes, flash, RAM and images/s measured, top-1 on the test split
    assert re.search(r"C99\s+│ model\.c\s+│(\s+[\d,]+\s+│){4}\s+\d+\.\d+%", text)
    assert (tmp_path / "c" / "model.c").is_file() and (tmp_path / "c" / "model.h").is_file()


def test_float_models_refuse_int8_and_c(packed, tmp_path, capsys):
    assert main(["export", str(packed / "base"), "--c", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "not fixed point" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(packed / "base")]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_measure_does_not_time_fake_quantization(packed, capsys):
    # a fixed-point model in PyTorch simulates its integer arithmetic: no latency, a pointer to
    # the code that a device runs instead
    capsys.readouterr()
    assert main(["measure", str(packed / "q"), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["latency_ms_b1"] is None and row["latency_ms_b64"] is None
    assert main(["measure", str(packed / "q")]) == 0
    assert "netshrink export" in capsys.readouterr().out
    assert main(["measure", str(packed / "base"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["latency_ms_b1"] > 0  # a float model is timed


def test_int8_integers_choose_the_files_8_bit_type(packed, tmp_path):
    import onnx

    def initializer_types(path) -> set[int]:
        return {t.data_type for t in onnx.load(str(path)).graph.initializer}

    base = ["export", str(packed / "q.nsk"), "--check", "50", "--int8"]
    assert main(base + [str(tmp_path / "u.onnx")]) == 0
    assert main(base + [str(tmp_path / "s.onnx"), "--int8-integers", "int8"]) == 0
    unsigned, signed = (
        initializer_types(tmp_path / "u.onnx"),
        initializer_types(tmp_path / "s.onnx"),
    )
    assert onnx.TensorProto.UINT8 in unsigned and onnx.TensorProto.INT8 not in unsigned
    assert onnx.TensorProto.INT8 in signed

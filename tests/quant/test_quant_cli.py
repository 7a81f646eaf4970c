"""`netshrink quantize` and `netshrink qat` end to end on a digits checkpoint: each writes a
fixed-point checkpoint that reloads with the same formats, prints the formats table and the
integer-path check, and user mistakes exit 2 with one line."""

import pytest
import torch

from helpers import train_cli_baseline
from netshrink.checkpoint import load_checkpoint
from netshrink.cli import main
from netshrink.quant import fixed_point_formats, is_quantized


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train_cli_baseline(tmp_path_factory.mktemp("quant_cli") / "base", epochs=3)


def test_quantize_writes_a_fixed_point_checkpoint_and_checks_the_integer_path(
    base, tmp_path, capsys
):
    out = tmp_path / "q"
    argv = ["quantize", str(base), "--weights", "6", "--activations", "8", "--calibrate", "kl"]
    assert main(argv + ["--layer-bits", "fc3=8", "--no-latency", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fixed-point formats" in text and "fixed point w6/a8" in text
    assert "identical logits on 359/359 test images" in text.replace("\n", " ")
    model, meta = load_checkpoint(out)
    assert is_quantized(model)
    formats = fixed_point_formats(model)
    assert {n: s.bits for n, s in formats.weights.items()} == {"fc1": 6, "fc2": 6, "fc3": 8}
    assert 0.8 < meta.metrics["test_top1"] <= 1


def test_qat_trains_and_stays_fixed_point(base, tmp_path, capsys):
    out = tmp_path / "qat"
    argv = ["qat", str(base), "--weights", "4", "--activations", "4", "--epochs", "1"]
    assert main(argv + ["--no-latency", "--out", str(out)]) == 0
    assert "QAT w4/a4" in capsys.readouterr().out
    model, _ = load_checkpoint(out)
    formats = fixed_point_formats(model)
    assert {s.bits for s in formats.weights.values()} == {4}
    x = torch.randn(4, 1, 8, 8)
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--layer-bits", "fc3"], "--layer-bits"),
        (["--layer-bits", "nope=4"], "nope"),
        (["--weights", "1"], "--weights"),
        (["--float-layers", "fc9"], "fc9"),
    ],
)
def test_mistakes_exit_2_with_one_line(base, tmp_path, capsys, extra, words):
    argv = ["quantize", str(base), "--no-latency", "--out", str(tmp_path / "bad"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("netshrink: error:") and words in err
    assert len(err.strip().splitlines()) == 1

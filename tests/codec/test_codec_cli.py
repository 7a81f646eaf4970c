"""`netshrink pack / unpack / inspect`: a checkpoint survives the round trip, inspect prints the
per-tensor table, and a damaged file is one line on stderr and exit status 2."""

import sys

import pytest
import torch

from netshrink.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from netshrink.cli import build_parser
from netshrink.data import DataConfig
from netshrink.errors import Error
from netshrink.models import ModelSpec, build_model
from netshrink.prune import PruneMagnitudeConfig, StdThreshold, prune_magnitude


def _main(argv: list[str]) -> int:
    """What netshrink.cli.main does with these sub-commands registered."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except Error as exc:
        print(f"netshrink: error: {exc}", file=sys.stderr)
        return 2
    return 0


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(name="lenet5")
    model = build_model(spec)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0)))
    meta = CheckpointMeta(
        model=spec,
        input_shape=(1, 28, 28),
        num_classes=10,
        data=DataConfig(source="digits", image_size=28),
        metrics={"test_top1": 0.5},
    )
    return model, meta, save_checkpoint(model, tmp_path / "ckpt", meta)


def test_pack_inspect_unpack(checkpoint, tmp_path, capsys):
    model, meta, stem = checkpoint
    packed = tmp_path / "model.nsk"
    assert _main(["pack", str(stem), "-o", str(packed), "--index-bits", "best"]) == 0
    assert "smaller than fp32" in capsys.readouterr().out
    assert _main(["inspect", str(packed)]) == 0
    table = capsys.readouterr().out
    for text in ("conv1.weight", "sparse", "entropy", "bits/weight", "lenet5"):
        assert text in table
    assert _main(["unpack", str(packed), "-o", str(tmp_path / "back")]) == 0
    restored, restored_meta = load_checkpoint(tmp_path / "back")
    assert restored_meta == meta
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(restored(x), model.eval()(x))


def test_errors_are_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    _, _, stem = checkpoint
    packed = tmp_path / "model.nsk"
    assert _main(["pack", str(stem), "-o", str(packed)]) == 0
    damaged = tmp_path / "damaged.nsk"
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    for argv in (
        ["inspect", str(damaged)],
        ["unpack", str(damaged), "-o", str(tmp_path / "x")],
        ["pack", str(stem), "-o", str(packed), "--index-bits", "40"],
        ["pack", str(stem), "-o", str(packed), "--coders", "lzma"],
    ):
        assert _main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("netshrink: error:") and err.count("\n") == 1, err


FACTORY = """
from torch import nn
def make(num_classes=10, in_channels=1, input_size=28):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes))
"""


def test_unpack_imports_a_factory_only_with_allow_import(tmp_path, monkeypatch, capsys):
    (tmp_path / "nsk_cli_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nsk_cli_factory", raising=False)
    spec = ModelSpec(name="nsk_cli_factory:make")
    meta = CheckpointMeta(model=spec, input_shape=(1, 4, 4), num_classes=3)
    model = build_model(spec, num_classes=3, input_size=4, allow_import=[spec.name])
    stem = save_checkpoint(model, tmp_path / "c", meta)
    packed = tmp_path / "c.nsk"
    assert _main(["pack", str(stem), "-o", str(packed)]) == 2  # the checkpoint names it too
    assert _main(["pack", str(stem), "-o", str(packed), "--allow-import", spec.name]) == 0
    out = str(tmp_path / "back")
    assert _main(["unpack", str(packed), "-o", out]) == 2
    assert "--allow-import" in capsys.readouterr().err
    other = ["--allow-import", "other_pkg:make"]
    assert _main(["unpack", str(packed), "-o", out, *other]) == 2
    for prefix in ("nsk_cli_factory", "*"):  # a module or a wildcard is a usage error
        with pytest.raises(SystemExit, match="2"):
            _main(["unpack", str(packed), "-o", out, "--allow-import", prefix])
    assert "exact factory" in capsys.readouterr().err
    assert _main(["unpack", str(packed), "-o", out, "--allow-import", "nsk_cli_factory:make"]) == 0
    assert load_checkpoint(tmp_path / "back", allow_import=[spec.name])[1].model == spec

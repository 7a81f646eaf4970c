"""The import policy (docs/security.md): a checkpoint, `.nsk`, recipe or run directory written by
someone else may name a zoo model freely, but no factory it names is imported or called unless
the user allowed that exact `package.module:factory`. Each reproducer names `os:system` with a
command that would leave a marker file, and goes through every command that opens such a file."""

import json
import sys

import pytest
import torch

from netshrink.checkpoint import CheckpointMeta, checkpoint_paths, load_checkpoint, save_checkpoint
from netshrink.cli import main
from netshrink.codec import pack, unpack
from netshrink.data import DataConfig
from netshrink.errors import CorruptFileError, ImportNotAllowedError
from netshrink.models import ModelSpec, build_model, lenet300_100

DIGITS = (1, 8, 8)


def _evil_spec(marker) -> dict:
    return {"name": "os:system", "args": {"command": f"touch {marker}"}}


@pytest.fixture
def forged(tmp_path):
    """A real lenet300_100 checkpoint whose sidecar now names os:system; and the same as .nsk."""
    torch.manual_seed(0)
    model = lenet300_100(num_classes=10, in_channels=1, input_size=8)
    meta = CheckpointMeta(
        model=ModelSpec(name="lenet300_100"),
        input_shape=DIGITS,
        num_classes=10,
        data=DataConfig(source="digits"),
    )
    stem = save_checkpoint(model, tmp_path / "ckpt", meta)
    packed = pack(model, tmp_path / "ckpt.nsk", meta=meta)
    marker = tmp_path / "MARKER"
    sidecar = checkpoint_paths(stem)[1]
    data = json.loads(sidecar.read_text())
    data["model"] = _evil_spec(marker)
    sidecar.write_text(json.dumps(data))
    # The .nsk's header is forged by packing with the evil spec (nothing is built to pack).
    evil_nsk = pack(
        model,
        tmp_path / "evil.nsk",
        spec=ModelSpec.model_validate(_evil_spec(marker)),
        input_shape=DIGITS,
        num_classes=10,
    )
    return stem, packed, evil_nsk, marker


def test_python_calls_refuse_a_file_named_factory(forged):
    stem, _, evil_nsk, marker = forged
    for load in (
        lambda: load_checkpoint(stem),
        lambda: load_checkpoint(stem, allow_import=["os:getcwd"]),
        lambda: unpack(evil_nsk),
    ):
        with pytest.raises(ImportNotAllowedError, match="--allow-import os:system"):
            load()
    for prefix in (True, ["os"], "os:system"):  # never a whole module, never a bare string
        with pytest.raises(Exception, match="exact"):
            load_checkpoint(stem, allow_import=prefix)
    assert not marker.exists()


def test_every_command_refuses_a_file_named_factory(forged, tmp_path, capsys):
    stem, _, evil_nsk, marker = forged
    out = tmp_path / "out"
    commands = [
        ["evaluate", str(stem)],
        ["measure", str(stem), "--no-latency"],
        ["pack", str(stem), "-o", str(out / "m.nsk")],
        ["export", str(stem), "--onnx", str(out / "m.onnx")],
        ["export", str(evil_nsk), "--onnx", str(out / "m.onnx")],
        ["unpack", str(evil_nsk), "-o", str(out / "back")],
        ["prune", str(stem), "--method", "std", "--ratio", "1", "--out", str(out / "p")],
        ["share", str(stem), "--method", "kmeans", "--out", str(out / "s")],
        ["quantize", str(stem), "--out", str(out / "q")],
        ["distill", "--teacher", str(stem), "--student", "lenet300_100", "--out", str(out / "d")],
        [
            "distill",
            "--teacher",
            str(stem),
            "--student",
            "lenet300_100",
            "--out",
            str(out / "d"),
            "--allow-import",
            "os:getcwd",
        ],  # another factory allowed is not this one
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "os:system" in err and "Traceback" not in err, (argv, err)
    assert not marker.exists()


def test_a_recipe_naming_a_factory_needs_it_allowed(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(
        "name: evil\ndata: {source: digits}\n"
        f"baseline: {{model: 'os:system(command=\"touch {marker}\")', train: {{epochs: 1}}}}\n"
    )
    cache = tmp_path / "cache"
    run = [
        "run",
        str(recipe),
        "--out",
        str(tmp_path / "run"),
        "--no-latency",
        "--cache",
        str(cache),
    ]
    assert main(run) == 2
    assert "--allow-import os:system" in capsys.readouterr().err
    assert not marker.exists()
    assert not cache.exists() or not any(cache.rglob("*"))  # refused before any lock was taken


def test_a_run_whose_baseline_checkpoint_names_a_factory_is_refused(forged, tmp_path, capsys):
    stem, _, _, marker = forged
    recipe = tmp_path / "start.yaml"
    recipe.write_text(f"name: start\ndata: {{source: digits}}\nbaseline: {{checkpoint: {stem}}}\n")
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-latency"]) == 2
    assert "os:system" in capsys.readouterr().err
    assert not marker.exists()


USER_FACTORY = """
from torch import nn
def make(num_classes=10, in_channels=1, input_size=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes))
"""


def test_an_allowed_factory_trains_runs_and_reloads(tmp_path, monkeypatch, capsys):
    """The user's own factory works everywhere once named: train, run, unpack, report."""
    (tmp_path / "nsk_policy_nets.py").write_text(USER_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nsk_policy_nets", raising=False)
    name = "nsk_policy_nets:make"
    ckpt = tmp_path / "trained"
    argv = ["train", "--model", name, "--data", "digits", "--epochs", "1", "--out", str(ckpt)]
    assert main(argv) == 0  # typing --model names the factory: no flag needed
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"name: mine\ndata: {{source: digits}}\nbaseline: {{checkpoint: {ckpt}}}\n")
    run = tmp_path / "run"
    base = ["run", str(recipe), "--out", str(run), "--no-latency", "--cache", str(tmp_path)]
    assert main(base) == 2
    assert main([*base, "--allow-import", name]) == 0
    assert main(["report", str(run)]) == 2
    assert main(["report", str(run), "--allow-import", name]) == 0
    decoded = unpack(run / "model.nsk", allow_import=[name])
    assert decoded(torch.zeros(1, *DIGITS)).shape == (1, 10)


META_HOSTILE = """
import torch
from torch import nn
def make(num_classes=10, in_channels=1, input_size=8):
    torch.zeros(1).item()  # works on the CPU, not on the meta device
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes))
"""


def test_a_factory_that_cannot_build_on_meta_is_told_why(tmp_path, monkeypatch):
    (tmp_path / "nsk_meta_nets.py").write_text(META_HOSTILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nsk_meta_nets", raising=False)
    spec = ModelSpec(name="nsk_meta_nets:make")
    model = build_model(spec, num_classes=10, in_channels=1, input_size=8, allow_import=[spec.name])
    path = pack(model, tmp_path / "m.nsk", spec=spec, input_shape=DIGITS, num_classes=10)
    with pytest.raises(CorruptFileError, match="meta"):
        unpack(path, allow_import=[spec.name])

"""Hostile files, run directories and disks: atomic writes that leave no half-written file or
temporary and follow no planted symlink; OS errors as one line; outputs that would overwrite
inputs refused; one run at a time in a directory; run names that stay inside runs/."""

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch

from netshrink.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from netshrink.cli import main
from netshrink.codec import load_packed, pack
from netshrink.errors import ConfigError, DirectoryInUseError
from netshrink.files import atomic_write, directory_lock, refuse_overwrite_input
from netshrink.models import ModelSpec, build_model
from netshrink.pipeline import run_recipe
from netshrink.prune.sensitivity import Sensitivity, plot_sensitivity
from netshrink.recipe import parse_recipe

RECIPE = """\
name: tiny
data: {source: digits}
baseline: {model: lenet300_100, train: {epochs: 1}}
"""


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """An untrained LeNet-300-100 for 8x8 digits, saved as a checkpoint (no training: fast)."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="lenet300_100"), num_classes=10, in_channels=1, input_size=8)
    meta = CheckpointMeta(
        model=ModelSpec(name="lenet300_100"), input_shape=(1, 8, 8), num_classes=10
    )
    return save_checkpoint(model, tmp_path / "ck", meta)


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old" and _names(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_an_os_error_names_the_target_and_leaves_the_old_file(tmp_path, monkeypatch, code):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(src))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError) as caught:
        atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert caught.value.errno == code and caught.value.filename == str(path)
    assert path.read_text() == "old" and _names(tmp_path) == ["out.txt"]


def test_temporary_names_are_unique_and_unpredictable(tmp_path):
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_text("x")

    for _ in range(2):
        atomic_write(tmp_path / "out.txt", write)
    assert seen[0] != seen[1]
    assert all(n.startswith(".out.txt.") and n.endswith(".tmp") for n in seen)
    assert f".out.txt.{os.getpid()}.tmp" not in seen  # the old, guessable name


def test_a_written_file_gets_the_usual_mode_not_mkstemps_private_one(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic_write(tmp_path / "out.txt", lambda tmp: tmp.write_text("x"))
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~umask


def test_a_symlink_planted_at_a_temporary_name_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    work = tmp_path / "work"
    work.mkdir()
    planted = [".out.txt.planted.tmp", f".out.txt.{os.getpid()}.tmp"]
    for name in planted:
        (work / name).symlink_to(victim)
    # make mkstemp try the planted name first: it must skip it (O_EXCL), not write through it
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    atomic_write(work / "out.txt", lambda tmp: tmp.write_text("new"))
    assert victim.read_text() == "precious" and (work / "out.txt").read_text() == "new"
    assert _names(work) == sorted([*planted, "out.txt"])


def test_sensitivity_plot_is_written_atomically_with_the_format_of_its_name(tmp_path):
    result = Sensitivity(baseline_top1=0.9, sparsities=(0.0, 0.5), curves={"fc1": [0.9, 0.8]})
    path = plot_sensitivity(result, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and _names(tmp_path) == ["s.png"]


@pytest.mark.parametrize(
    "out, words",
    [
        ("somefile.txt/x.nsk", "somefile.txt: Not a directory"),
        ("folder", "folder: Is a directory"),
    ],
)
def test_an_os_error_on_the_command_line_is_one_line_and_exit_2(
    tmp_path, capsys, checkpoint, out, words
):
    (tmp_path / "somefile.txt").write_text("text")
    (tmp_path / "folder").mkdir()
    assert main(["pack", str(checkpoint), "-o", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netshrink: error: ") and words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_full_disk_on_the_command_line_is_one_line_naming_the_file(
    tmp_path, capsys, monkeypatch, checkpoint
):
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "m.nsk"
    assert main(["pack", str(checkpoint), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"netshrink: error: {out}: No space left on device"
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "argv",
    [
        ["pack", "{ck}", "-o", "{ck}.safetensors"],
        ["pack", "{ck}", "-o", "{ck}.json"],
        ["prune", "{ck}", "--method", "std", "--ratio", "1", "--out", "{ck}"],
        ["quantize", "{ck}", "--out", "{ck}.json"],
        ["share", "{ck}", "--method", "kmeans", "--out", "{ck}"],
        ["export", "{ck}", "--onnx", "{ck}.safetensors"],
    ],
)
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(capsys, checkpoint, argv):
    before = checkpoint.with_suffix(".safetensors").read_bytes()
    assert main([a.format(ck=checkpoint) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "is the input" in err and len(err.strip().splitlines()) == 1
    assert checkpoint.with_suffix(".safetensors").read_bytes() == before


def test_unpack_refuses_to_overwrite_its_own_file(tmp_path, capsys, checkpoint):
    assert main(["pack", str(checkpoint), "-o", str(tmp_path / "odd.json")]) == 0
    assert main(["unpack", str(tmp_path / "odd.json"), "-o", str(tmp_path / "odd")]) == 2
    assert "is the input" in capsys.readouterr().err


def test_a_symlink_to_an_input_is_that_input(tmp_path):
    source = tmp_path / "in.bin"
    source.write_bytes(b"x")
    (tmp_path / "link.bin").symlink_to(source)
    with pytest.raises(ConfigError, match="link.bin is the input"):
        refuse_overwrite_input([tmp_path / "link.bin"], [source])
    refuse_overwrite_input([tmp_path / "other.bin"], [source])  # a new file is no input


def test_a_packed_file_stands_for_a_checkpoint_on_the_command_line(tmp_path, capsys, checkpoint):
    """Commands that read a model take a .nsk too (decoded, its header as the sidecar); the
    Python checkpoint loader says how to decode one."""
    nsk = tmp_path / "m.nsk"
    assert main(["pack", str(checkpoint), "-o", str(nsk)]) == 0
    capsys.readouterr()
    for path in (checkpoint, nsk):
        assert main(["evaluate", str(path), "--data", "digits", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from_checkpoint, from_file = [json.loads(line) for line in lines if line.startswith("{")]
    assert from_checkpoint["top1"] == from_file["top1"]
    with pytest.raises(ConfigError, match=f"compressed .nsk file.*netshrink unpack {nsk}"):
        load_checkpoint(nsk)


def test_a_second_run_in_a_locked_directory_fails_at_once(tmp_path, capsys):
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(RECIPE)
    out = tmp_path / "run"
    with directory_lock(out):
        with pytest.raises(DirectoryInUseError, match="in use by another netshrink run"):
            run_recipe(parse_recipe(RECIPE), out, progress=False)
        assert main(["run", str(recipe_file), "--out", str(out)]) == 2
        assert main(["run", str(recipe_file), "--out", str(out), "--restart"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("in use by another netshrink run" in line for line in err)
    assert _names(out) == [".lock"]  # nothing was written or cleared


def test_the_lock_is_released_and_a_stale_lock_file_locks_nothing(tmp_path):
    with directory_lock(tmp_path):
        pass
    with directory_lock(tmp_path):  # the .lock file of the first is still there
        assert (tmp_path / ".lock").is_file()


@pytest.mark.parametrize("name", ["../../x", "/etc", "a/b", ".", "..", ".hidden", "x" * 101, ""])
def test_a_run_name_must_be_one_plain_folder_name(name):
    with pytest.raises(ConfigError, match="cannot name a run folder"):
        parse_recipe(RECIPE.replace("name: tiny", f"name: '{name}'"))


def test_timing_values_stay_out_of_the_packed_file(tmp_path, checkpoint):
    model, meta = load_checkpoint(checkpoint)
    files = []
    for seconds, latency in ((12.5, 0.31), (97.0, 0.45)):
        metrics = {"test_top1": 0.9, "train_seconds": seconds}
        timed = meta.model_copy(update={"metrics": metrics})
        measurement = {"stage": "packed", "top1": 0.9, "latency_ms_b1": latency}
        files.append(pack(model, tmp_path / f"{seconds}.nsk", meta=timed, measurement=measurement))
    assert files[0].read_bytes() == files[1].read_bytes()
    _, header = load_packed(files[0])
    assert header.metrics == {"test_top1": 0.9}
    assert header.measurement == {"stage": "packed", "top1": 0.9}


def test_report_refuses_a_directory_a_run_is_writing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with directory_lock(run):
        assert main(["report", str(run)]) == 2
    assert "in use" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2

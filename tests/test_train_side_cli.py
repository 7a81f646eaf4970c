"""`netshrink distill` and `netshrink compressive` end to end on a digits checkpoint: each writes
a checkpoint that loads and prints its tables; user mistakes are one-line ConfigErrors."""

import pytest
import torch

from netshrink.checkpoint import load_checkpoint
from netshrink.cli import build_parser, main
from netshrink.errors import ConfigError


def run(argv):
    """Run `netshrink ARGV` through the sub-commands that train_side_cli registers."""
    args = build_parser().parse_args(argv)
    args.run(args)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_side_cli") / "teacher"
    argv = ["train", "--model", "lenet300_100", "--data", "digits", "--epochs", "3"]
    assert main(argv + ["--batch-size", "64", "--out", str(out)]) == 0
    return out


def test_distill_a_fresh_student_with_kd_and_ab(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    run(
        [
            "distill",
            "--teacher",
            str(teacher),
            "--student",
            "lenet300_100",
            "--kd",
            "4.0,0.9",
            "--ab",
            "fc1:fc1,fc2:fc1",
            "--ab-epochs",
            "1",
            "--epochs",
            "3",
            "--warmup-epochs",
            "1",
            "--clip-grad-norm",
            "5",
            "--no-latency",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "teacher" in text and "student (distilled)" in text
    model, meta = load_checkpoint(out)
    assert meta.model.name == "lenet300_100" and meta.fit.epochs == 3
    assert (meta.fit.warmup_epochs, meta.fit.clip_grad_norm) == (1, 5)
    assert meta.metrics["test_top1"] > 0.8
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_distill_with_pruning_and_fixed_point_writes_a_fixed_point_checkpoint(teacher, tmp_path):
    out = tmp_path / "student"
    argv = ["distill", "--teacher", str(teacher), "--student", str(teacher), "--epochs", "2"]
    run(argv + ["--sparsity", "0.5", "--bits", "8", "--no-latency", "--out", str(out)])
    model, meta = load_checkpoint(out)
    assert [e.kind for e in meta.edits] == ["fixed_point"]
    assert float((model.get_submodule("fc1").weight == 0).float().mean()) >= 0.5
    assert meta.metrics["test_top1"] > 0.8


def test_distill_mistakes_are_config_errors(teacher, tmp_path):
    base = ["distill", "--teacher", str(teacher), "--student", "lenet300_100", "--no-latency"]
    with pytest.raises(ConfigError, match="T,ALPHA"):
        run(base + ["--kd", "4", "--out", str(tmp_path / "a")])
    with pytest.raises(ConfigError, match="no layer named conv1"):
        run(base + ["--ab", "conv1:fc1", "--epochs", "0", "--out", str(tmp_path / "b")])
    with pytest.raises(ConfigError, match="student_layer:teacher_layer"):
        run(base + ["--ab", "fc1", "--out", str(tmp_path / "c")])


def test_compressive_writes_a_checkpoint_and_the_steps_table(teacher, tmp_path, capsys):
    out = tmp_path / "compressed"
    run(
        [
            "compressive",
            str(teacher),
            "--global-sparsity",
            "0.5",
            "--budget",
            "3",
            "--layer-sparsity",
            "0.9",
            "--no-latency",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "compressive training" in text and "kept" in text
    model, meta = load_checkpoint(out)
    zeros = float((model.fc1.weight == 0).float().mean())
    assert zeros >= 0.5 and meta.fit == load_checkpoint(teacher)[1].fit
    assert meta.metrics["test_top1"] > 0.8


def test_compressive_levels_and_bad_values(teacher, tmp_path):
    out = tmp_path / "levels"
    argv = ["compressive", str(teacher), "--constraint", "levels", "--levels", "4"]
    run(argv + ["--budget", "100", "--prune-epochs", "0", "--no-latency", "--out", str(out)])
    model, _ = load_checkpoint(out)
    assert torch.unique(model.fc1.weight).numel() <= 5  # 4 values and zero
    with pytest.raises(ConfigError, match="--layer-sparsity"):
        run(["compressive", str(teacher), "--layer-sparsity", "1.5", "--out", str(out)])


def test_distill_bits_out_of_range_is_one_line_naming_the_flag(teacher, tmp_path, capsys):
    argv = ["distill", "--teacher", str(teacher), "--student", "lenet300_100", "--bits", "1"]
    assert main(argv + ["--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netshrink: error: --bits:") and len(err.strip().splitlines()) == 1

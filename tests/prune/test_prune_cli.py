import json

import pytest

from helpers import train_cli_baseline
from netshrink.checkpoint import load_checkpoint
from netshrink.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train_cli_baseline(tmp_path_factory.mktemp("prune_cli") / "base", epochs=4)


def _sparsity(path) -> float:
    model, _ = load_checkpoint(path)
    weights = [model.fc1.weight, model.fc2.weight, model.fc3.weight]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_iterative_std_prune_writes_a_sparse_checkpoint(base, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                str(base),
                "--method",
                "std",
                "--ratio",
                "1.0",
                "--steps",
                "2",
                "--retrain-epochs",
                "1",
                "--out",
                str(out),
                "--no-latency",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "pruned (std)" in printed and "fc1" in printed
    assert 0.5 < _sparsity(out) < 0.85  # |w| < 1 std of roughly uniform/normal weights
    _, meta = load_checkpoint(out)
    assert meta.metrics["test_top1"] > 0.8


def test_global_prune_and_sensitivity(base, tmp_path):
    assert (
        main(
            [
                "prune",
                str(base),
                "--method",
                "global",
                "--sparsity",
                "0.9",
                "--retrain-epochs",
                "1",
                "--out",
                str(tmp_path / "g"),
                "--no-latency",
            ]
        )
        == 0
    )
    assert _sparsity(tmp_path / "g") == pytest.approx(0.9, abs=1e-3)
    assert main(["sensitivity", str(base), "--out", str(tmp_path / "s")]) == 0
    curves = json.loads((tmp_path / "s" / "sensitivity.json").read_text())["curves"]
    assert sorted(curves) == ["fc1", "fc2", "fc3"]
    assert (tmp_path / "s" / "sensitivity.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--method", "std"], "--ratio"),
        (["--method", "gradual", "--sparsity", "0.9"], "--retrain-epochs"),
        (["--method", "sparsity", "--sparsity", "1.5"], "sparsity"),
        (["--method", "std", "--ratio", "1", "--layers", "fc9"], "fc9"),
    ],
)
def test_prune_mistakes_are_one_line_errors(base, tmp_path, capsys, argv, words):
    assert main(["prune", str(base), *argv, "--out", str(tmp_path / "x"), "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netshrink: error:") and words in err
    assert not (tmp_path / "x.safetensors").exists()


def test_filter_pruning_a_sparse_checkpoint_keeps_its_zeros(base, tmp_path, capsys):
    conv = tmp_path / "conv"
    assert (
        main(
            [
                "train",
                "--model",
                "lenet5",
                "--data",
                "digits",
                "--image-size",
                "28",
                "--epochs",
                "2",
                "--batch-size",
                "64",
                "--out",
                str(conv),
            ]
        )
        == 0
    )
    sparse = tmp_path / "sparse"
    assert (
        main(
            [
                "prune",
                str(conv),
                "--method",
                "sparsity",
                "--sparsity",
                "0.5",
                "--out",
                str(sparse),
                "--no-latency",
            ]
        )
        == 0
    )
    out = tmp_path / "filters"
    assert (
        main(
            [
                "prune",
                str(sparse),
                "--method",
                "filters",
                "--amount",
                "0.5",
                "--retrain-epochs",
                "1",
                "--out",
                str(out),
                "--no-latency",
            ]
        )
        == 0
    )
    model, meta = load_checkpoint(out)
    assert model.conv1.out_channels == 3 and model.conv2.out_channels == 8
    assert [e.module for e in meta.edits][:2] == ["conv1", "conv2"]
    assert float((model.fc1.weight == 0).float().mean()) >= 0.5  # retraining kept the zeros
    capsys.readouterr()
    assert (
        main(
            [
                "prune",
                str(base),
                "--method",
                "filters",
                "--amount",
                "0.5",
                "--out",
                str(tmp_path / "x"),
                "--no-latency",
            ]
        )
        == 0
    )
    mlp, _ = load_checkpoint(tmp_path / "x")  # no convolution: its hidden neurons are pruned
    assert (mlp.fc1.out_features, mlp.fc2.out_features) == (150, 50)

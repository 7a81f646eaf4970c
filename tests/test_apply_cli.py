"""`netshrink apply CHECKPOINT METHOD --set PATH=VALUE`: any method on a checkpoint, its fields
given as in a recipe stage; a mistake is one line naming the field."""

import pytest
import torch

from helpers import train_cli_baseline
from netshrink.checkpoint import load_checkpoint
from netshrink.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return train_cli_baseline(tmp_path_factory.mktemp("apply_cli") / "base", epochs=2)


def test_apply_runs_a_method_with_the_fields_it_sets(base, tmp_path, capsys):
    out = tmp_path / "k2"
    argv = ["apply", str(base), "share_kmeans", "--set", "config.bits=2"]
    assert main(argv + ["--layers", "fc1,fc2", "--no-latency", "--out", str(out)]) == 0
    assert "share_kmeans" in capsys.readouterr().out
    model, _ = load_checkpoint(out)
    assert torch.unique(model.fc1.weight).numel() <= 4
    assert torch.unique(model.fc2.weight).numel() <= 4
    assert torch.unique(model.fc3.weight).numel() > 4  # not in --layers


@pytest.mark.parametrize(
    "settings, words",
    [
        (["config.bits=0"], "config.bits"),  # out of range: the field is named
        (["config.nope=1"], "config.nope"),  # unknown field
        (["config.bits"], "PATH=VALUE"),  # no value
    ],
)
def test_apply_mistakes_are_one_line(base, tmp_path, capsys, settings, words):
    argv = ["apply", str(base), "share_kmeans", *(f"--set={s}" for s in settings)]
    assert main(argv + ["--no-latency", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netshrink: error:") and words in err
    assert len(err.strip().splitlines()) == 1

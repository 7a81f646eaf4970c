"""One unit for every accuracy budget: percentage points of top-1, whichever face sets it."""

import pytest
from pydantic import ValidationError

from netshrink.budget import floor_below
from netshrink.cli import main
from netshrink.compressive import CompressiveConfig
from netshrink.prune import PruneIncrementalConfig
from netshrink.quant.search import BitSearchConfig

CONFIGS = (PruneIncrementalConfig, BitSearchConfig, CompressiveConfig)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_budget_is_in_points_and_names_its_unit(config):
    assert config(budget=1.0).budget == 1.0 and config(budget=100).budget == 100
    for bad in (-0.5, 100.5):
        with pytest.raises(ValidationError, match="percentage points"):
            config(budget=bad)


def test_a_point_is_a_hundredth_of_top1():
    assert floor_below(0.91, 1.0) == pytest.approx(0.90)
    assert floor_below(0.91, 0.0) == 0.91


def test_the_cli_takes_points_and_says_the_unit(capsys, tmp_path):
    ckpt = tmp_path / "base"
    train = ["train", "--model", "lenet300_100", "--data", "digits", "--epochs", "1"]
    assert main([*train, "--out", str(ckpt)]) == 0
    prune = ["prune", str(ckpt), "--method", "incremental", "--no-latency"]
    assert main([*prune, "--budget", "150", "--out", str(tmp_path / "a")]) == 2
    assert "percentage points" in capsys.readouterr().err
    assert main([*prune, "--budget", "1.0", "--out", str(tmp_path / "b")]) == 0

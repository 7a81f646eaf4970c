"""SVD factorization (Denton et al. 2014; Gong et al. 2014): exact at full rank, ranks from a
ratio or kept energy, a structural edit that replays on a fresh model and survives a checkpoint."""

import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from netshrink.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from netshrink.edits import FactorLayer, structural_edits
from netshrink.errors import ConfigError, CorruptFileError, UnsupportedLayerError
from netshrink.models import ModelSpec, build_model
from netshrink.prune import PruneMagnitudeConfig, StdThreshold, prune_magnitude
from netshrink.replay import replay_edits
from netshrink.share import FactorSvdConfig, choose_rank, factor_svd


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1, bias=False),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 3),
    ).eval()


def test_full_rank_reproduces_the_outputs():
    model = _net()
    x = torch.randn(4, 3, 8, 8)
    expected = model(x)
    factor_svd(model, FactorSvdConfig(rank=10_000), progress=False)
    assert isinstance(model[0], nn.Sequential) and model[0][1].kernel_size == (1, 1)
    assert model[0][0].stride == (2, 2) and model[2][1].bias is None
    assert model[4][0].weight.shape == (12, 80) and model[4][1].weight.shape == (12, 12)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert [e.rank for e in structural_edits(model)] == [6, 5, 12, 3]


def test_rank_by_ratio_and_by_energy():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert choose_rank(s, (100, 100), FactorSvdConfig(ratio=10)) == 4  # 10000 / 2000 = 5 -> 4
    assert choose_rank(s, (40, 60), FactorSvdConfig(ratio=12)) == 2  # 2400 / (12 * 100)
    assert choose_rank(s, (10, 10), FactorSvdConfig(energy=16 / 22)) == 1
    assert choose_rank(s, (10, 10), FactorSvdConfig(energy=0.8)) == 2
    assert choose_rank(s, (10, 10), FactorSvdConfig(energy=1.0)) == 4
    with pytest.raises(ValidationError, match="exactly one"):
        FactorSvdConfig(rank=2, energy=0.5)


def test_checkpoint_of_a_factored_pruned_model_round_trips(tmp_path):
    model = build_model(ModelSpec(name="lenet5_caffe"))
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0)))
    factor_svd(model, FactorSvdConfig(energy=0.9), layers=["conv2", "fc1"], progress=False)
    meta = CheckpointMeta(
        model=ModelSpec(name="lenet5_caffe"), input_shape=(1, 28, 28), num_classes=10
    )
    save_checkpoint(model, tmp_path / "svd", meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "svd")
    assert [e.module for e in loaded_meta.edits] == ["conv2", "fc1"]
    assert loaded.fc1[0].weight.shape == model.fc1[0].weight.shape
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    assert "fc1.1.bias" in loaded.state_dict()


def test_replay_rebuilds_the_shapes_and_checks_the_layer():
    fresh = _net()
    replay_edits(fresh, [FactorLayer(module="4", rank=3)])
    assert fresh[4][0].weight.shape == (3, 80) and fresh[4][1].weight.shape == (12, 3)
    with pytest.raises(UnsupportedLayerError, match="structural edit 0"):
        replay_edits(_net(), [FactorLayer(module="1", rank=2)])  # a ReLU
    with pytest.raises(ConfigError, match="does not have"):
        replay_edits(_net(), [FactorLayer(module="fc9", rank=2)])


def test_grouped_convs_are_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(UnsupportedLayerError, match="groups"):
        factor_svd(model, FactorSvdConfig(rank=2), progress=False)
    bad = tmp_path / "bad"
    meta = CheckpointMeta(
        model=ModelSpec(name="lenet300_100"), input_shape=(1, 28, 28), num_classes=10
    )
    save_checkpoint(build_model(ModelSpec(name="lenet300_100")), bad, meta)
    sidecar = json.loads((tmp_path / "bad.json").read_text())
    sidecar["edits"] = [{"kind": "factor", "module": "relu1", "rank": 2}]
    (tmp_path / "bad.json").write_text(json.dumps(sidecar))
    with pytest.raises(CorruptFileError, match="structural edits"):
        load_checkpoint(bad)

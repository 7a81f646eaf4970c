import pytest
import torch
from torch import nn

from netshrink.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from netshrink.errors import ConfigError
from netshrink.layers import select_layers
from netshrink.models import ModelSpec, build_model
from netshrink.prune.magnitude import (
    GlobalSparsity,
    LayerSparsity,
    PruneMagnitudeConfig,
    StdThreshold,
    prune_magnitude,
    sparsity_keep,
)
from netshrink.prune.mask import bake_masks, get_mask, layer_sparsity, restore_masks


def _lenet300():
    torch.manual_seed(0)
    return build_model(ModelSpec(name="lenet300_100"))


def test_std_threshold_prunes_exactly_below_ratio_times_std():
    model = _lenet300()
    dense = model.fc1.weight.detach().clone()
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.2)))
    expected = dense.abs() >= 1.2 * dense.std()
    assert torch.equal(model.fc1.weight != 0, expected)
    assert torch.equal(model.fc1.weight[expected], dense[expected])
    # Gaussian-ish init: |w| < 1.2 std is roughly 77% for a normal, 69% for a uniform.
    assert 0.6 < layer_sparsity(model)["fc1.weight"] < 0.8
    assert get_mask(model.fc1, "bias") is None  # biases are left alone unless asked


def test_percentile_prunes_an_exact_count_and_per_layer_overrides():
    model = _lenet300()
    config = PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.9), per_layer={"fc3": 0.5})
    prune_magnitude(model, config)
    assert int((model.fc1.weight == 0).sum()) == round(0.9 * 784 * 300)
    assert int((model.fc3.weight == 0).sum()) == round(0.5 * 100 * 10)
    kept = model.fc1.weight[model.fc1.weight != 0].abs().min()
    pruned = model.fc1.parametrizations.weight.original[model.fc1.weight == 0].abs().max()
    assert kept >= pruned


def test_global_threshold_is_one_magnitude_across_layers():
    model = _lenet300()
    dense = {n: m.weight.detach().clone() for n, m in select_layers(model)}
    prune_magnitude(model, PruneMagnitudeConfig(threshold=GlobalSparsity(sparsity=0.8)))
    total = sum(w.numel() for w in dense.values())
    zeros = sum(int((m.weight == 0).sum()) for _, m in select_layers(model))
    assert zeros == round(0.8 * total)
    kept_min = min(
        float(m.weight.detach()[m.weight != 0].abs().min()) for _, m in select_layers(model)
    )
    pruned_max = max(float(dense[n][m.weight == 0].abs().max()) for n, m in select_layers(model))
    assert kept_min >= pruned_max


def test_bias_pruned_only_when_asked_and_layers_filter():
    model = _lenet300()
    prune_magnitude(
        model,
        PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5), include_bias=True),
        layers=["fc2"],
    )
    assert get_mask(model.fc2, "bias") is not None
    assert int((model.fc2.bias == 0).sum()) == 50
    assert get_mask(model.fc1) is None
    prune_magnitude(
        model,
        PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5)),
        layers=lambda name, module: name == "fc3",
    )
    assert get_mask(model.fc3) is not None
    with pytest.raises(ConfigError, match="no layer named fc9"):
        prune_magnitude(
            model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5)), layers=["fc9"]
        )
    with pytest.raises(ConfigError, match="per_layer"):
        prune_magnitude(
            model,
            PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5), per_layer={"fc9": 0.1}),
        )


def test_masks_only_grow_and_std_is_of_the_dense_layer():
    model = _lenet300()
    dense_std = float(model.fc1.weight.detach().std())
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=0.5)))
    first = model.fc1.weight != 0
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0)))
    second = model.fc1.weight != 0
    assert not (second & ~first).any()
    assert float(get_mask(model.fc1).dense_std) == pytest.approx(dense_std)
    assert torch.equal(second, model.fc1.parametrizations.weight.original.abs() >= dense_std)
    prune_magnitude(model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.1)))
    assert torch.equal(model.fc1.weight != 0, second)  # a lower target never revives weights


def test_pruned_weights_stay_exactly_zero_through_sgd_momentum_and_weight_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    prune_magnitude(model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.7)))
    zeros = {n: m.weight == 0 for n, m in select_layers(model)}
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True
    )
    for _ in range(100):
        loss = nn.functional.cross_entropy(
            model(torch.randn(16, 3, 8, 8)), torch.randint(0, 5, (16,))
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, module in select_layers(model):
        assert (module.weight[zeros[name]] == 0.0).all()
        assert (module.weight[~zeros[name]] != 0).all()


def test_sparsity_keep_is_exact_with_ties():
    weight = torch.zeros(10)
    keep = sparsity_keep(weight, 0.3)
    assert int((~keep).sum()) == 3


def test_checkpoint_of_a_pruned_model_restores_masks_from_zeros(tmp_path):
    model = _lenet300()
    prune_magnitude(model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.9)))
    meta = CheckpointMeta(
        model=ModelSpec(name="lenet300_100"), input_shape=(1, 28, 28), num_classes=10
    )
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path / "pruned", meta))
    restore_masks(loaded, select_layers(loaded))
    assert layer_sparsity(loaded) == pytest.approx(layer_sparsity(model))
    bake_masks(model)
    assert get_mask(model.fc1) is None and int((model.fc1.weight == 0).sum()) == round(0.9 * 235200)


def test_batchnorm_is_pruned_only_when_named():
    model = build_model(ModelSpec(name="vgg_small", args={"width": 0.25}))
    prune_magnitude(model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5)))
    assert all(get_mask(m) is None for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        model.features[1].weight.copy_(torch.arange(8.0))
    prune_magnitude(
        model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5)), layers=["features.1"]
    )
    assert torch.equal(model.features[1].weight, torch.tensor([0.0] * 4 + [4, 5, 6, 7]))


def test_baking_a_deep_copy_leaves_the_original_working():
    import copy

    model = _lenet300()
    prune_magnitude(model, PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.5)))
    twin = copy.deepcopy(model)
    bake_masks(twin)
    assert get_mask(twin.fc1) is None and get_mask(model.fc1) is not None
    assert torch.equal(model.fc1.weight, twin.fc1.weight)

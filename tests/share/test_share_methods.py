"""share_kmeans / share_pq / share_rq / share_binary on real layers: codebooks are the only
trainable weight tensors, fine-tuning with `fit` moves centroids and never indices or zeros,
masks are carried (not stacked), and mistakes are netshrink errors."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.mask import get_mask
from netshrink.models import lenet300_100
from netshrink.prune import PruneMagnitudeConfig, StdThreshold, prune_magnitude
from netshrink.share import (
    ScalarCodebook,
    ShareBinaryConfig,
    ShareKmeansConfig,
    SharePqConfig,
    ShareRqConfig,
    share_binary,
    share_kmeans,
    share_pq,
    share_rq,
    shared_layers,
)
from netshrink.train import FitConfig, evaluate, fit


@pytest.fixture()
def pruned():
    torch.manual_seed(0)
    model = lenet300_100(input_size=8)
    return prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=0.8)))


def _codebook(module) -> ScalarCodebook:
    (book,) = module.parametrizations.weight
    return book


def test_kmeans_replaces_the_mask_and_keeps_zeros(pruned):
    zeros = {n: (m.weight == 0).clone() for n, m in pruned.named_children() if hasattr(m, "weight")}
    share_kmeans(pruned, ShareKmeansConfig(bits=3), progress=False)
    for name in ("fc1", "fc2", "fc3"):
        module = getattr(pruned, name)
        book = _codebook(module)  # one parametrization: the mask was replaced, not stacked
        assert get_mask(module) is None and book.centroids.numel() == 8
        assert torch.equal(module.weight == 0, zeros[name])
        assert torch.isin(module.weight[module.weight != 0], book.centroids).all()
        assert not module.parametrizations.weight.original.requires_grad


def test_finetuning_moves_centroids_only(pruned, digits):
    share_kmeans(pruned, ShareKmeansConfig(fc_bits=2, per_layer={"fc3": 4}), progress=False)
    assert _codebook(pruned.fc3).centroids.numel() == 16
    before = {
        n: (
            _codebook(m).centroids.detach().clone(),
            _codebook(m).indices.clone(),
            m.weight.detach() == 0,
        )
        for n, m in pruned.named_children()
        if n[:2] == "fc"
    }
    fit(pruned, digits, FitConfig(epochs=1, lr=0.001, batch_size=64), progress=False)
    for name, (centroids, indices, zeros) in before.items():
        module = getattr(pruned, name)
        book = _codebook(module)
        assert not torch.equal(book.centroids, centroids)  # trained
        assert torch.equal(book.indices, indices)  # never reassigned
        assert torch.equal(module.weight == 0, zeros)  # pruned weights stay exactly 0
        kept = module.weight[~zeros]
        assert torch.equal(kept, book.centroids[book.indices][~zeros])  # each is a centroid


def test_a_plain_checkpoint_treats_exact_zeros_as_pruned():
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight[0, :3] = 0
    model = nn.Sequential(layer)
    share_kmeans(model, ShareKmeansConfig(bits=1), progress=False)
    assert torch.equal(model[0].weight[0, :3], torch.zeros(3))
    assert int(_codebook(model[0]).mask.sum()) == 21


def test_sharing_a_copy_leaves_the_original_intact(pruned):
    copy_ = copy.deepcopy(pruned)
    share_kmeans(copy_, ShareKmeansConfig(bits=2), progress=False)
    assert get_mask(pruned.fc1) is not None
    assert pruned.fc1.weight.shape == (300, 64)  # the shared parametrized class survives


def test_pq_rq_binary_keep_zeros_and_train_their_codebooks(pruned, digits):
    zeros = pruned.fc2.weight == 0
    methods = [
        (share_pq, SharePqConfig(segment=2, k=4), "codebooks"),
        (share_rq, ShareRqConfig(stages=2, k=4, segment=3, axis="columns"), "codebooks"),
        (share_binary, ShareBinaryConfig(scale="channel"), "scales"),
        (share_binary, ShareBinaryConfig(scale="layer", ternary=True), "scales"),
    ]
    for method, config, trained in methods:
        model = method(copy.deepcopy(pruned), config, progress=False)
        assert bool((model.fc2.weight[zeros] == 0).all())
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        assert f"fc2.parametrizations.weight.0.{trained}" in names
        assert "fc2.parametrizations.weight.original" not in names
        assert len(shared_layers(model)) == 3
    fit(model, digits, FitConfig(epochs=1, lr=0.001, batch_size=64), progress=False)
    assert bool((model.fc2.weight[zeros] == 0).all())


def _brute_force_member_mean(module, upstream):
    """Each codebook entry's expected gradient for the loss sum(weight * upstream): the mean of
    upstream over the kept weights that entry moves, each times how far it moves them (a shared
    weight is linear in its codebook, so one unit step per entry finds them)."""
    (book,) = module.parametrizations.weight
    (table,) = [p for p in book.parameters()]
    expected = torch.zeros_like(table).reshape(-1)
    with torch.no_grad():
        base = module.weight.clone()
        for e in range(expected.numel()):
            value = table.view(-1)[e].item()
            table.view(-1)[e] = value + 1
            moved = module.weight - base
            table.view(-1)[e] = value  # restored exactly: `- 1` would leave a rounding error
            members = moved != 0
            if members.any():
                expected[e] = (moved * upstream)[members].sum() / members.sum()
    return table, expected.reshape(table.shape)


@pytest.mark.parametrize(
    ("method", "config"),
    [
        (share_kmeans, ShareKmeansConfig(bits=2)),
        (share_pq, SharePqConfig(segment=3, k=4)),
        (share_rq, ShareRqConfig(stages=2, k=3, segment=4, axis="columns")),
        (share_binary, ShareBinaryConfig(scale="channel")),
        (share_binary, ShareBinaryConfig(scale="layer", ternary=True)),
    ],
)
def test_each_shared_value_moves_by_its_kept_members_mean_gradient(method, config):
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    with torch.no_grad():
        layer.weight[layer.weight.abs() < 0.1] = 0  # pruned weights are no members
    method(nn.Sequential(layer), config, progress=False)
    upstream = torch.randn(6, 10)
    table, expected = _brute_force_member_mean(layer, upstream)
    (layer.weight * upstream).sum().backward()
    assert torch.allclose(table.grad, expected, atol=1e-5)


def test_finetuning_an_unpruned_model_at_the_baseline_rate_holds(mlp, digits):
    """A big cluster's step does not grow with its size: 2-bit sharing of the unpruned fc1
    (19,200 weights, ~5k to a centroid) fine-tunes at the rate the model trained with."""
    model = share_kmeans(copy.deepcopy(mlp), ShareKmeansConfig(bits=2), progress=False)
    shared = evaluate(model, digits.loader("val", 500)).top1
    fit(model, digits, FitConfig(epochs=2, lr=0.05), progress=False)
    assert evaluate(model, digits.loader("val", 500)).top1 >= shared - 0.02


def test_binary_values_are_plus_minus_alpha_per_channel():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -3.0, 2.0, -2.0], [0.5, 0.5, -0.5, 0.1]]))
    share_binary(nn.Sequential(layer), ShareBinaryConfig(), progress=False)
    assert layer.weight.tolist()[0] == [2.0, -2.0, 2.0, -2.0]
    ternary = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        ternary.weight.copy_(torch.tensor([[1.0, -1.0, 0.1, 2.0]]))
    share_binary(nn.Sequential(ternary), ShareBinaryConfig(ternary=True), progress=False)
    # delta = 0.7 * mean|w| = 0.7175: 0.1 goes to 0, the rest share alpha = mean(1, 1, 2)
    assert ternary.weight.tolist()[0] == pytest.approx([4 / 3, -4 / 3, 0.0, 4 / 3])


def test_conv_layers_are_shared_through_their_matrix():
    conv = nn.Conv2d(3, 8, 3)
    model = nn.Sequential(conv)
    share_pq(model, SharePqConfig(segment=3, k=8), progress=False)
    assert conv.weight.shape == (8, 3, 3, 3)
    assert conv(torch.zeros(1, 3, 5, 5)).shape == (1, 8, 3, 3)


def test_mistakes_are_netshrink_errors(pruned):
    with pytest.raises(ConfigError, match="not among the layers"):
        share_kmeans(pruned, ShareKmeansConfig(per_layer={"fc9": 3}), layers=["fc1"])
    with pytest.raises(ConfigError, match="no layer named"):
        share_kmeans(pruned, ShareKmeansConfig(), layers=["conv1"])
    with pytest.raises(ConfigError, match="longer than"):
        share_pq(pruned, SharePqConfig(segment=200, k=2), layers=["fc3"], progress=False)
    bn = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(UnsupportedLayerError, match="BatchNorm1d"):
        share_kmeans(bn, ShareKmeansConfig(), layers=["1"])

    class FixedPoint(nn.Module):  # stands in for a quantizer's parametrization
        def forward(self, x):
            return torch.round(x * 256) / 256

    parametrize.register_parametrization(pruned.fc3, "weight", FixedPoint())
    with pytest.raises(UnsupportedLayerError, match="FixedPoint.*before quantizing"):
        share_kmeans(pruned, ShareKmeansConfig(), layers=["fc3"], progress=False)
    with pytest.raises(ValueError):
        ShareKmeansConfig(bits=0)


def test_a_fully_pruned_layer_is_refused_before_anything_changes(pruned):
    with torch.no_grad():
        pruned.fc3.parametrizations.weight[0].mask.zero_()
    with pytest.raises(ConfigError, match="fc3 has no surviving weights"):
        share_kmeans(pruned, ShareKmeansConfig(), progress=False)
    assert get_mask(pruned.fc1) is not None  # untouched

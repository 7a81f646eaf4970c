"""Filter pruning (Li et al. 2017): the physically pruned model computes exactly what the masked
model computes, every dependency is followed, and what cannot be followed is refused up front."""

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from helpers import Copies, TfSame
from netshrink.edits import structural_edits
from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.measure import count_macs, count_parameters
from netshrink.models import lenet5, lenet5_caffe, lenet300_100, mobilenet_v2, resnet20, vgg_small
from netshrink.prune.channel_graph import analyze_channels
from netshrink.prune.filters import (
    PruneFiltersConfig,
    mask_filters,
    plan_filters,
    prune_filters,
)
from netshrink.prune.surgery import (
    keep_batchnorm,
    keep_depthwise,
    keep_in_channels,
    keep_out_channels,
)

CIFAR, MNIST = (3, 32, 32), (1, 28, 28)


def _with_stats(model: nn.Module) -> nn.Module:
    """Eval mode and non-trivial BatchNorm statistics and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.5)
                m.bias.normal_(0, 0.5)
    return model.eval()


def _macs(model, shape):
    return sum(row.macs for row in count_macs(model, shape))


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CASES = {
    "resnet20-group": (resnet20, CIFAR, {"amount": 0.3}),
    "resnet20-skip": (resnet20, CIFAR, {"amount": 0.3, "residual": "skip"}),
    "mobilenet_v2": (lambda: mobilenet_v2(width=0.5), CIFAR, {"amount": 0.3}),
    "vgg_small": (vgg_small, MNIST, {"amount": 0.3, "include_linear": True}),
    "lenet5": (lenet5, MNIST, {"amount": 0.3, "include_linear": True}),
    "lenet5_caffe": (lenet5_caffe, MNIST, {"amount": 0.5}),
    "lenet300_100": (lenet300_100, MNIST, {"amount": 0.3}),  # no conv: its neurons, by default
    # clamps, pads, nearest upsampling pass channels; the pixel shuffle locks conv's
    "copies": (Copies, (3, 12, 12), {"amount": 0.5}),
    "conv2d-same": (TfSame, (3, 11, 11), {"amount": 0.5}),  # layers that convolve themselves
}


@pytest.mark.parametrize("case", CASES)
def test_pruned_model_equals_masked_model_and_is_smaller(case):
    factory, shape, args = CASES[case]
    torch.manual_seed(0)
    model = _with_stats(factory())
    original = copy.deepcopy(model)
    config = PruneFiltersConfig(**args)
    plan = plan_filters(model, config, shape)
    masked = mask_filters(copy.deepcopy(model), plan)
    params, macs = count_parameters(model).total, _macs(model, shape)

    assert prune_filters(model, config, shape) is model
    assert structural_edits(model) == plan.edits()
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.allclose(model(x), masked(x), atol=1e-5, rtol=0)
        assert (model(x) - original(x)).abs().max() > 1e-3  # the comparison is not vacuous
    assert count_parameters(model).total < 0.75 * params
    assert _macs(model, shape) < 0.75 * macs

    model.train()
    F.cross_entropy(model(x), torch.arange(4)).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_resnet20_group_shapes_and_identical_indices():
    torch.manual_seed(0)
    model = resnet20()
    original = copy.deepcopy(model)
    plan = plan_filters(model, PruneFiltersConfig(amount=0.3), CIFAR)
    groups = [s for s in plan.spaces if len(s.producers) > 1]
    assert [len(s.producers) for s in groups] == [4, 4, 4]
    stage2 = groups[1]
    assert "layer2.0.shortcut.0" in stage2.producers
    # Li et al.'s L1 criterion, summed over the group's producers.
    scores = sum(original.get_submodule(p).weight.abs().sum((1, 2, 3)) for p in stage2.producers)
    assert stage2.keep == tuple(sorted(scores.argsort(descending=True)[:22].tolist()))

    prune_filters(model, PruneFiltersConfig(amount=0.3), CIFAR)
    keep = torch.tensor(stage2.keep)
    norms = ["layer2.0.bn2", "layer2.0.shortcut.1", "layer2.1.bn2", "layer2.2.bn2"]
    for name in norms:  # the BatchNorm after every producer keeps the same channels
        assert torch.equal(
            model.get_submodule(name).weight, original.get_submodule(name).weight[keep]
        )
    assert torch.equal(
        model.layer2[0].shortcut[0].weight,
        original.layer2[0].shortcut[0].weight[keep][:, torch.tensor(groups[0].keep)],
    )
    assert torch.equal(model.fc.weight, original.fc.weight[:, torch.tensor(groups[2].keep)])
    assert (model.conv1.out_channels, model.layer1[0].conv1.out_channels) == (11, 11)
    assert (model.layer2[0].shortcut[0].out_channels, model.layer2[0].bn2.num_features) == (22, 22)
    assert model.layer3[0].shortcut[0].in_channels == 22
    assert model.fc.in_features == 45 and model.fc.out_features == 10


def test_resnet20_skip_leaves_residual_groups_whole():
    model = resnet20()
    plan = plan_filters(model, PruneFiltersConfig(amount=0.3, residual="skip"), CIFAR)
    assert all(len(s.producers) == 1 for s in plan.spaces) and len(plan.spaces) == 9
    assert plan.skipped["layer2.0.shortcut.0"] == "residual group (residual='skip')"
    prune_filters(model, PruneFiltersConfig(amount=0.3, residual="skip"), CIFAR)
    assert model.conv1.out_channels == 16 and model.layer2[0].shortcut[0].out_channels == 32
    assert model.layer3[2].conv2.out_channels == 64 and model.fc.in_features == 64
    widths = [model.get_submodule(f"layer{i}.0.conv1").out_channels for i in (1, 2, 3)]
    assert widths == [11, 22, 45]
    assert model.layer1[0].conv2.in_channels == 11


def test_mobilenet_depthwise_follows_its_expansion():
    model = _with_stats(mobilenet_v2(width=0.5))
    prune_filters(model, PruneFiltersConfig(amount=0.5), CIFAR)
    block = model.features[2].conv  # 8 -> 48 expansion, depthwise 48, project -> 16
    depthwise = block[1][0]
    assert block[0][0].in_channels == 4  # the first block's output (8) halved
    assert block[0][0].out_channels == 24 and block[0][1].num_features == 24
    assert depthwise.in_channels == depthwise.out_channels == depthwise.groups == 24
    assert depthwise.weight.shape == (24, 1, 3, 3) and block[1][1].num_features == 24
    assert block[2].in_channels == 24 and block[2].out_channels == 8  # residual group halved too
    assert model.classifier[1].in_features == 640


@pytest.mark.parametrize(
    "factory, fc, width",
    [(vgg_small, "classifier.1", 90 * 9), (lenet5, "fc1", 11 * 25), (lenet5_caffe, "fc1", 35 * 16)],
)
def test_flatten_to_linear_is_sliced_in_blocks(factory, fc, width):
    model = _with_stats(factory())
    prune_filters(model, PruneFiltersConfig(amount=0.3), MNIST)
    assert model.get_submodule(fc).in_features == width
    assert model(torch.zeros(2, *MNIST)).shape == (2, 10)


def test_target_macs_halves_vgg_small():
    model = _with_stats(vgg_small())
    before = _macs(model, MNIST)
    prune_filters(model, PruneFiltersConfig(target_macs=0.5), MNIST)
    saved = 1 - _macs(model, MNIST) / before
    assert 0.5 <= saved < 0.56
    with pytest.raises(ConfigError, match="out of reach"):
        prune_filters(
            vgg_small(), PruneFiltersConfig(target_macs=0.9), MNIST, layers=["features.0"]
        )


def test_criteria_pick_the_expected_channels():
    model = lenet5()
    with torch.no_grad():
        scale = torch.tensor([5.0, 1.0, 4.0, 2.0, 6.0, 3.0])
        model.conv1.weight.copy_(scale[:, None, None, None] * torch.ones(6, 1, 5, 5))
    for criterion in ("l1", "l2"):
        plan = plan_filters(
            model, PruneFiltersConfig(amount=0.5, criterion=criterion), MNIST, layers=["conv1"]
        )
        assert plan.spaces[0].keep == (0, 2, 4)
    with pytest.raises(ConfigError, match="conv1"):  # no BatchNorm after it
        plan_filters(model, PruneFiltersConfig(amount=0.5, criterion="bn_scale"), MNIST)

    model = vgg_small(width=0.25)  # 8 channels in the first conv
    gammas = torch.tensor([0.1, -3.0, 0.2, 2.0, -0.05, 1.0, 0.3, -0.4])
    with torch.no_grad():
        model.features[1].weight.copy_(gammas)
    prune_filters(
        model, PruneFiltersConfig(amount=0.5, criterion="bn_scale"), MNIST, layers=["features.0"]
    )
    assert torch.equal(model.features[1].weight, gammas[[1, 3, 5, 7]])
    assert model.features[0].out_channels == 4 and model.features[3].in_channels == 4


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_c = nn.Conv2d(16, 12, 3, padding=1)
        self.bn_c = nn.BatchNorm2d(12)
        self.conv_d = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.cat([torch.relu(self.conv_a(x)), F.relu(self.conv_b(x))], dim=1)
        y = torch.relu(self.bn_c(self.conv_c(y)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv_d(y), 1), 1))


def test_cat_locks_its_inputs_and_nothing_changes_on_refusal():
    torch.manual_seed(0)
    model = _with_stats(CatNet())
    state = copy.deepcopy(model.state_dict())
    config = PruneFiltersConfig(amount=0.3)
    for layers in (["conv_a", "conv_c"], lambda name, m: True):
        with pytest.raises(UnsupportedLayerError, match=r"conv_a.*cat.*layers="):
            prune_filters(model, config, (3, 16, 16), layers=layers)
        assert _same_state(model.state_dict(), state)
    assert plan_filters(model, config, (3, 16, 16)).skipped["conv_b"].startswith("locked by cat")

    plan = plan_filters(
        model, config, (3, 16, 16), layers=lambda name, m: name not in ("conv_a", "conv_b")
    )
    masked = mask_filters(copy.deepcopy(model), plan)
    prune_filters(model, config, (3, 16, 16), layers=["conv_c", "conv_d"])
    assert model.conv_c.out_channels == model.bn_c.num_features == model.conv_d.in_channels == 8
    assert model.conv_a.out_channels == 8 and model.fc.in_features == 6
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(model(x), masked(x), atol=1e-5, rtol=0)


class OpNet(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.conv_b(self.op(self.conv_a(x)))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize(
    "op, locker",
    [
        (lambda y: torch.cat([y[:, 4:], y[:, :4]], 1), "getitem"),
        (lambda y: y - y.mean(1, keepdim=True), "mean"),
        (lambda y: y.softmax(1), "softmax"),
        (lambda y: y.view(y.shape[0], 2, -1).flip(1).view(y.shape), "view"),
    ],
)
def test_unknown_channel_ops_lock_their_spaces(op, locker):
    model = OpNet(op)
    with pytest.raises(UnsupportedLayerError, match=f"conv_a.*{locker}"):
        prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 8, 8), layers=["conv_a"])
    prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 8, 8))
    assert (model.conv_a.out_channels, model.conv_b.out_channels, model.fc.in_features) == (8, 4, 4)


class ConstantNet(nn.Module):
    """Fixup-style scalars held as parameters (`x + self.bias`, `x * self.scale`), and a
    per-channel offset buffer that the channels of conv_b's space would have to share."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.bias, self.scale = nn.Parameter(torch.tensor([0.3])), nn.Parameter(torch.ones(1))
        self.register_buffer("offset", torch.linspace(-1, 1, 8).view(1, 8, 1, 1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = F.relu(self.conv_a(x) * self.scale + self.bias)
        return self.fc((self.conv_b(y + self.bias) + self.offset).mean((2, 3)))


def test_a_constant_shared_by_every_channel_prunes_and_a_per_channel_one_locks():
    torch.manual_seed(0)
    model = ConstantNet()
    with pytest.raises(UnsupportedLayerError, match="conv_b.*add"):
        prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 8, 8), layers=["conv_b"])
    masked = mask_filters(
        copy.deepcopy(model), plan_filters(model, PruneFiltersConfig(amount=0.5), (3, 8, 8))
    )
    prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 8, 8))
    assert (model.conv_a.out_channels, model.conv_b.out_channels) == (4, 8)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), masked(x), atol=1e-5, rtol=0)


class FlatNet(nn.Module):
    """A classifier head written with the feature count spelled out (or read from the tensor)."""

    def __init__(self, flatten):
        super().__init__()
        self.flatten = flatten
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.conv_b(F.relu(self.conv_a(x)))))


@pytest.mark.parametrize(
    "flatten, cut",
    [
        (lambda y: y.view(-1, 128), False),  # a literal: conv_b's channels stay
        (lambda y: y.reshape(y.size(0), 128), False),
        (lambda y: torch.reshape(y, (-1, 128)), False),
        (lambda y: y.view(y.size(0), -1), True),
        (lambda y: y.flatten(1), True),
    ],
)
def test_a_literal_feature_count_locks_the_flattened_channels(flatten, cut):
    model = FlatNet(flatten)
    if not cut:
        with pytest.raises(UnsupportedLayerError, match="conv_b.*literal 128 features"):
            prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 4, 4), layers=["conv_b"])
    prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 4, 4))
    assert model.conv_a.out_channels == 4
    assert model.conv_b.out_channels == (4 if cut else 8)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 10)  # the pruned model still runs


class Gate(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # data-dependent control flow


def test_untraceable_model_is_refused_naming_the_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Gate(), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(UnsupportedLayerError, match=r"fx-traceable.*'1'"):
        prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 8, 8))


def test_grouped_conv_spaces_are_locked():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    for name in ("0", "2"):
        with pytest.raises(UnsupportedLayerError, match="groups=2"):
            prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 12, 12), layers=[name])
    plan = plan_filters(model, PruneFiltersConfig(amount=0.5), (3, 12, 12))
    assert sorted(plan.skipped) == ["0", "2"] and [s.producers for s in plan.spaces] == [("4",)]
    prune_filters(model, PruneFiltersConfig(amount=0.5), (3, 12, 12))
    assert [model[i].out_channels for i in (0, 2, 4)] == [8, 8, 4] and model[7].in_features == 4


def test_layer_selection_errors_and_per_layer():
    model = resnet20()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="layer1.0.bn1"):
        plan_filters(model, PruneFiltersConfig(amount=0.3), CIFAR, layers=["layer1.0.bn1"])
    with pytest.raises(ConfigError, match="residual adds"):
        plan_filters(model, PruneFiltersConfig(amount=0.3), CIFAR, layers=["layer1.0.conv2"])
    with pytest.raises(ConfigError, match="per_layer"):
        plan_filters(model, PruneFiltersConfig(amount=0.3, per_layer={"nope": 0.1}), CIFAR)
    with pytest.raises(UnsupportedLayerError, match="fc.*model output"):
        plan_filters(
            model, PruneFiltersConfig(amount=0.3, include_linear=True), CIFAR, layers=["fc"]
        )
    with pytest.raises(ConfigError, match="input_shape"):
        plan_filters(model, PruneFiltersConfig(amount=0.3), MNIST)  # ResNet-20 wants 3 channels
    assert _same_state(model.state_dict(), state)
    prune_filters(model, PruneFiltersConfig(amount=0.0, per_layer={"layer1.0.conv1": 0.5}), CIFAR)
    assert model.layer1[0].conv1.out_channels == 8
    assert model.layer1[1].conv1.out_channels == 16 and len(structural_edits(model)) == 3


def test_linear_layers_are_pruned_by_default_only_in_a_model_without_convolutions():
    mlp = plan_filters(lenet300_100(), PruneFiltersConfig(amount=0.3), MNIST)
    assert {p for s in mlp.spaces for p in s.producers} == {"fc1", "fc2"}
    cnn = plan_filters(lenet5(), PruneFiltersConfig(amount=0.3), MNIST)
    assert {p for s in cnn.spaces for p in s.producers} == {"conv1", "conv2"}
    with pytest.raises(ConfigError, match="no convolution, and include_linear=False"):
        plan_filters(lenet300_100(), PruneFiltersConfig(amount=0.3, include_linear=False), MNIST)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="exactly one"):
        PruneFiltersConfig()
    with pytest.raises(ConfigError, match="exactly one"):
        PruneFiltersConfig(amount=0.3, target_macs=0.5)
    for bad in (
        {"amount": 1.0},
        {"amount": -0.1},
        {"target_macs": 0.0},
        {"amount": 0.3, "per_layer": {"conv1": 1.5}},
        {"amount": 0.3, "min_channels": 0},
    ):
        with pytest.raises(ConfigError):
            PruneFiltersConfig(**bad)
    with pytest.raises(ValidationError):
        PruneFiltersConfig(amount=0.3, criterion="l3")
    with pytest.raises(ValidationError):
        PruneFiltersConfig(amount=0.3, ratio=0.2)


def test_min_channels_and_wrappers():
    model = nn.DataParallel(lenet5())  # names carry no "module." prefix
    prune_filters(model, PruneFiltersConfig(amount=0.9, min_channels=3), MNIST, layers=["conv2"])
    assert model.module.conv2.out_channels == 3 and model.module.fc1.in_features == 75
    assert structural_edits(model)[0].module == "conv2"


def test_parametrized_layers_are_refused_before_anything_changes():
    class Identity(nn.Module):
        def forward(self, w):
            return w

    model = lenet5()
    parametrize.register_parametrization(model.conv2, "weight", Identity())
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedLayerError, match="before masks"):
        prune_filters(model, PruneFiltersConfig(amount=0.5), MNIST, layers=["conv1"])
    assert _same_state(model.state_dict(), state) and model.conv1.out_channels == 6


def test_surgery_functions():
    conv = nn.Conv2d(4, 6, 3)
    conv.bias.requires_grad_(False)
    keep_out_channels(conv, [1, 4])
    assert conv.weight.shape == (2, 4, 3, 3) and conv.out_channels == 2
    assert isinstance(conv.weight, nn.Parameter) and conv.weight.is_contiguous()
    assert conv.weight.requires_grad and not conv.bias.requires_grad
    keep_in_channels(conv, [0, 3])
    assert conv.weight.shape == (2, 2, 3, 3) and conv.in_channels == 2
    norm = nn.BatchNorm2d(5)
    norm.running_mean.copy_(torch.arange(5.0))
    keep_batchnorm(norm, [2, 3])
    assert norm.num_features == 2 and norm.running_mean.tolist() == [2.0, 3.0]
    assert "running_mean" in dict(norm.named_buffers())
    depthwise = nn.Conv2d(5, 5, 3, groups=5)
    keep_depthwise(depthwise, [0, 4])
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 2
    for fn, module in (
        (keep_out_channels, nn.Conv2d(4, 4, 3, groups=2)),
        (keep_batchnorm, nn.LayerNorm(4)),
        (keep_depthwise, nn.Conv2d(4, 4, 3)),
    ):
        with pytest.raises(UnsupportedLayerError, match="Conv2d|LayerNorm"):
            fn(module, [0])


def test_analysis_records_producers_consumers_and_locks():
    graph = analyze_channels(vgg_small(), MNIST)
    last = graph.space_of("features.17")
    assert [(c.module, c.dim, c.factor) for c in last.consumers] == [
        ("features.18", "batchnorm", 1),
        ("classifier.1", "in", 9),
    ]
    assert graph.bn_after["features.17"] == "features.18"
    assert graph.space_of("classifier.4").locked_by == [
        "output (model output: classes are never pruned)"
    ]
    assert sum(s.prunable for s in graph.spaces) == 7

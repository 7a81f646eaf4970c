"""Tests of the seed papers' networks in the zoo: VGG-16 (Kim et al.), GoogLeNet (Kim et al.) and
DenseNet-BC (Shin & Oh compress DenseNet-201), at full depth and small widths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netshrink.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from netshrink.codec import pack, unpack
from netshrink.errors import ConfigError
from netshrink.graph import trace
from netshrink.models import MODELS, ModelSpec, build_model, densenet, googlenet, vgg16
from netshrink.models.densenet import DenseLayer
from netshrink.models.googlenet import Inception

# small enough for a CPU test: every layer of the full depth, a fraction of the channels
SMALL = {
    "vgg16": {"width": 0.125},
    "googlenet": {"width": 0.125},
    "densenet": {"growth": 4, "depth": 16},
}
DIGITS = (1, 8, 8)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_count(factory, **kwargs) -> int:
    """The parameter count of a model too large to allocate in a test."""
    with torch.device("meta"):
        return count(factory(**kwargs))


def _built(name: str, shape: tuple[int, int, int] = DIGITS) -> tuple[nn.Module, ModelSpec]:
    torch.manual_seed(0)
    spec = ModelSpec(name=name, args=SMALL[name])
    model = build_model(spec, num_classes=10, in_channels=shape[0], input_size=shape[1])
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers are checked too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), spec


def _outputs(model: nn.Module, shape: tuple[int, int, int] = DIGITS) -> torch.Tensor:
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


def test_registered_in_the_zoo() -> None:
    assert MODELS["vgg16"] is vgg16
    assert MODELS["googlenet"] is googlenet
    assert MODELS["densenet"] is densenet


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (1, 8, 8)])
def test_forward_shape(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = MODELS[name](num_classes=7, in_channels=shape[0], input_size=shape[1], **SMALL[name])
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_exact_parameter_counts() -> None:
    # 13 convs without bias (14,710,464) + 13 BN (8,448) + 512 -> 512 -> 512 -> 10 (530,442).
    assert meta_count(vgg16) == 15_249_354
    assert meta_count(vgg16, batch_norm=False) == 15_249_354 - 8_448 + 4_224
    # configuration D with its ImageNet head is torchvision's vgg16, layer for layer
    paper = {"num_classes": 1000, "input_size": 224, "hidden": 4096}
    assert meta_count(vgg16, batch_norm=False, **paper) == 138_357_544
    assert meta_count(vgg16, **paper) == 138_357_544 - 4_224 + 8_448  # vgg16_bn less conv biases
    # the paper's 5x5 branch and no conv biases; CIFAR GoogLeNets are usually quoted at ~6.2M
    assert meta_count(googlenet) == 5_871_914
    # DenseNet-BC: L=40, k=12 (the default); L=100, k=12 is the paper's "0.8M" (Table 2)
    assert count(densenet()) == 176_122
    assert meta_count(densenet, depth=100) == 769_162
    # torchvision's DenseNet-201 and -121 at 224x224 (ImageNet stem)
    imagenet = {"num_classes": 1000, "input_size": 224, "growth": 32}
    assert meta_count(densenet, blocks=(6, 12, 48, 32), **imagenet) == 20_013_928
    assert meta_count(densenet, blocks=(6, 12, 24, 16), **imagenet) == 7_978_856
    # DenseNet-201 with the CIFAR stem (3x3 conv, no BN) and 10 classes
    assert meta_count(densenet, blocks=(6, 12, 48, 32), growth=32) == 18_104_330


def test_parameter_counts_at_test_widths() -> None:
    assert count(vgg16(width=0.125)) == 240_066
    assert count(googlenet(width=0.125)) == 95_010
    assert count(densenet(growth=4, depth=16)) == 5_466


def test_width_multipliers_scale_parameters() -> None:
    assert meta_count(vgg16, width=0.25) < meta_count(vgg16) < meta_count(vgg16, width=2.0)
    assert count(vgg16(width=0.25)) == 956_154  # ~1/16 of the weights
    assert meta_count(googlenet, width=0.5) < meta_count(googlenet) < meta_count(googlenet, width=2)
    assert count(googlenet(width=0.25)) == 372_578
    assert count(densenet(growth=6)) < count(densenet()) < count(densenet(growth=24))
    assert count(densenet(depth=16)) < count(densenet()) < meta_count(densenet, depth=100)
    assert count(vgg16(width=0.001)) > 0  # channels never round down to zero
    assert count(googlenet(width=0.001)) > 0


def test_vgg16_structure() -> None:
    model = vgg16(width=0.125)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 32] + [64] * 6
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 1, 1)
    assert model.features(torch.zeros(1, 3, 28, 28)).shape == (1, 64, 1, 1)  # pools round up
    assert vgg16(input_size=64, width=0.125).classifier[1].in_features == 64 * 2 * 2


def test_googlenet_structure() -> None:
    model = googlenet()
    blocks = {name: m for name, m in model.named_children() if isinstance(m, Inception)}
    assert [name[len("inception") :] for name in blocks] == [
        "3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"
    ]  # fmt: skip
    # output widths of Table 1 (Szegedy et al. 2015)
    assert [b.out_channels for b in blocks.values()] == [
        256, 480, 512, 512, 512, 528, 832, 832, 1024
    ]  # fmt: skip
    assert blocks["inception4a"].branch3[1][0].kernel_size == (5, 5)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 1 + 9 * 6
    assert model.fc.in_features == 1024


def test_densenet_structure() -> None:
    model = densenet()
    features = dict(model.features.named_children())
    assert list(features) == [
        "conv0", "denseblock1", "transition1", "denseblock2", "transition2", "denseblock3",
        "norm5",
    ]  # fmt: skip
    assert [len(features[f"denseblock{i}"]) for i in (1, 2, 3)] == [6, 6, 6]
    assert all(isinstance(m, DenseLayer) for m in features["denseblock1"])
    # 24 + 6 * 12 = 96 channels, halved by the transition; 48 + 72 = 120, 60 + 72 = 132
    assert features["transition1"].conv.out_channels == 48
    assert features["transition2"].conv.out_channels == 60
    assert model.classifier.in_features == 132
    layer = features["denseblock2"][0]
    assert (layer.conv1.out_channels, layer.conv2.out_channels) == (48, 12)  # 4k bottleneck, k
    assert count(densenet(depth=40)) == count(densenet(blocks=[6, 6, 6]))
    stem = densenet(blocks=(1, 1, 1, 1), growth=4, input_size=64).features
    assert [n for n, _ in stem.named_children()][:4] == ["conv0", "norm0", "relu0", "pool0"]


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (vgg16, {"width": 0}),
        (vgg16, {"width": float("nan")}),
        (vgg16, {"hidden": 0}),
        (vgg16, {"batch_norm": "yes"}),
        (vgg16, {"num_classes": 0}),
        (googlenet, {"input_size": 3}),
        (googlenet, {"width": -1.0}),
        (googlenet, {"in_channels": True}),
        (densenet, {"growth": 0}),
        (densenet, {"growth": 1.5}),
        (densenet, {"depth": 41}),
        (densenet, {"depth": 4}),
        (densenet, {"depth": 40, "blocks": [6, 6, 6]}),
        (densenet, {"blocks": []}),
        (densenet, {"blocks": [6, 0, 6]}),
        (densenet, {"blocks": "666"}),
        (densenet, {"blocks": [1] * 9}),
        (densenet, {"blocks": [300, 300]}),
        (densenet, {"input_size": 3}),  # three blocks need 4x4
        (densenet, {"blocks": [1] * 6, "input_size": 28}),  # six need 32x32
    ],
)
def test_factories_reject_bad_arguments(factory, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        factory(**kwargs)


def test_smallest_valid_inputs_run() -> None:
    assert vgg16(width=0.125, input_size=1)(torch.zeros(2, 3, 1, 1)).shape == (2, 10)
    assert googlenet(width=0.125, input_size=4)(torch.zeros(2, 3, 4, 4)).shape == (2, 10)
    assert densenet(growth=4, depth=10, input_size=4)(torch.zeros(2, 3, 4, 4)).shape == (2, 10)


def test_spec_args_round_trip_through_json() -> None:
    spec = ModelSpec.parse("densenet(blocks=(2, 1, 1, 1), growth=4)")
    assert spec.args == {"blocks": [2, 1, 1, 1], "growth": 4}
    model = build_model(spec, num_classes=3, in_channels=1, input_size=8)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("name", list(SMALL))
def test_traceable_by_fx(name: str) -> None:
    model, _ = _built(name)
    traced = trace(model, "the zoo test")
    assert torch.equal(_outputs(traced), _outputs(model))


@pytest.mark.parametrize("name", list(SMALL))
def test_checkpoint_round_trip(name: str, tmp_path) -> None:
    model, spec = _built(name)
    meta = CheckpointMeta(model=spec, input_shape=DIGITS, num_classes=10)
    loaded, loaded_meta = load_checkpoint(save_checkpoint(model, tmp_path / name, meta))
    assert loaded_meta == meta
    original = model.state_dict()
    assert all(torch.equal(original[k], v) for k, v in loaded.state_dict().items())
    assert torch.equal(_outputs(loaded), _outputs(model))


@pytest.mark.parametrize("name", list(SMALL))
def test_pack_round_trip(name: str, tmp_path) -> None:
    model, spec = _built(name)
    path = pack(model, tmp_path / f"{name}.nsk", spec=spec, input_shape=DIGITS, num_classes=10)
    assert torch.equal(_outputs(unpack(path)), _outputs(model))

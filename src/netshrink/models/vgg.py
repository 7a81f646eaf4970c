"""VGG (Simonyan & Zisserman 2015): a small VGG for 28x28 and 32x32 images (three stages of two
3x3 convolutions, each stage doubling the channels and halving the resolution), and VGG-16,
configuration D at full depth with a width multiplier, CIFAR-style for small inputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from netshrink.errors import ConfigError
from netshrink.models.checks import check_data_args, check_width

# Channel multiples of the base width c; "M" is a 2x2 max pool.
_PLAN: tuple[int | str, ...] = (1, 1, "M", 2, 2, "M", 4, 4, "M")
# VGG-16, configuration D of Simonyan & Zisserman 2015 (Table 1): 13 convolutions in 5 blocks.
_VGG16: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)  # fmt: skip


class VGGSmall(nn.Module):
    """VGG-style classifier (Simonyan & Zisserman 2015): ``features`` then ``classifier``."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _make_features(
    in_channels: int, plan: list[int | str], batch_norm: bool, ceil_mode: bool = False
) -> nn.Sequential:
    """3x3 convolutions of ``plan``'s widths (+ BatchNorm) + ReLU; "M" is a 2x2 max pool."""
    layers: list[nn.Module] = []
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=ceil_mode))
            continue
        out_channels = int(item)
        # A bias before BatchNorm is cancelled by its mean subtraction: it would only add
        # parameters that pruning and coding then have to carry.
        layers.append(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batch_norm)
        )
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=False))
        in_channels = out_channels
    return nn.Sequential(*layers)


def vgg_small(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    width: float = 1.0,
    batch_norm: bool = True,
) -> VGGSmall:
    """Small VGG after Simonyan & Zisserman 2015: [c, c, pool, 2c, 2c, pool, 4c, 4c, pool] 3x3
    convolutions (each + BatchNorm if ``batch_norm``, + ReLU), then Flatten -> Linear(4c*s*s, h)
    -> ReLU -> Dropout(0.5) -> Linear(h, ``num_classes``), with c = round(32 * width),
    h = round(256 * width) and s = input_size // 8.

    Args:
        width: multiplies every layer's width; 0.5 gives a quarter of the convolution weights.
        batch_norm: BatchNorm after each convolution (the convolutions then have no bias).

    584,618 parameters at the defaults (1x28x28, 10 classes); needs ``input_size >= 8``.

    Example:
        >>> vgg_small(in_channels=3, input_size=32)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_data_args("vgg_small", num_classes, in_channels, input_size, min_size=8)
    width = check_width("vgg_small", width)
    if not isinstance(batch_norm, bool):
        raise ConfigError(f"vgg_small: batch_norm must be true or false, got {batch_norm!r}")
    base = max(1, round(32 * width))
    hidden = max(1, round(256 * width))
    side = input_size // 8
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(4 * base * side * side, hidden),
        nn.ReLU(inplace=False),
        nn.Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )
    plan = [item if item == "M" else int(item) * base for item in _PLAN]
    return VGGSmall(_make_features(in_channels, plan, batch_norm), classifier)


class VGG16(VGGSmall):
    """VGG-16 (Simonyan & Zisserman 2015, configuration D): ``features`` then ``classifier``,
    initialised as torchvision initialises its VGGs."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__(features, classifier)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)


def vgg16(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    width: float = 1.0,
    hidden: int = 512,
    batch_norm: bool = True,
) -> VGG16:
    """VGG-16, configuration D of Simonyan & Zisserman 2015 (the network Kim et al. compress), at
    full depth: 13 3x3 convolutions (+ BatchNorm if ``batch_norm``, + ReLU) in 5 blocks of
    64-64, 128-128, 256x3, 512x3, 512x3 channels, each block ending in a 2x2 max pool, then 3
    fully connected layers: Flatten -> Linear(512*s*s, h) -> ReLU -> Dropout(0.5) -> Linear(h, h)
    -> ReLU -> Dropout(0.5) -> Linear(h, ``num_classes``).

    CIFAR-style: the pools round up (``ceil_mode``), so any ``input_size`` works and s =
    ceil(input_size / 32): a 32x32 or 28x28 image ends at 1x1, an 8x8 one reaches 1x1 after the
    third pool (the last two then pool 1x1 to 1x1).

    Args:
        width: multiplies every convolution's and hidden layer's width (rounded, at least 1);
            the paper's network is ``width=1.0``; 0.25 gives about 1/16 of the weights.
        hidden: the two hidden fully connected layers' width at ``width=1.0``: 512 suits a 1x1
            final map (CIFAR); the paper's ImageNet head is ``hidden=4096``.
        batch_norm: BatchNorm after each convolution (the convolutions then have no bias).

    15,249,354 parameters at the defaults (3x32x32, 10 classes). With ``num_classes=1000``,
    ``input_size=224``, ``hidden=4096`` and ``batch_norm=False`` it is the paper's network with
    torchvision's 138,357,544 parameters.

    Example:
        >>> vgg16(width=0.25)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_data_args("vgg16", num_classes, in_channels, input_size)
    width = check_width("vgg16", width)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"vgg16: hidden must be a positive integer, got {hidden!r}")
    if not isinstance(batch_norm, bool):
        raise ConfigError(f"vgg16: batch_norm must be true or false, got {batch_norm!r}")
    plan = [item if item == "M" else max(1, round(int(item) * width)) for item in _VGG16]
    last = int(plan[-2])
    h = max(1, round(hidden * width))
    side = math.ceil(input_size / 32)
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(last * side * side, h),
        nn.ReLU(inplace=False),
        nn.Dropout(0.5),
        nn.Linear(h, h),
        nn.ReLU(inplace=False),
        nn.Dropout(0.5),
        nn.Linear(h, num_classes),
    )
    features = _make_features(in_channels, plan, batch_norm, ceil_mode=True)
    return VGG16(features, classifier)

"""A small VGG (Simonyan & Zisserman 2015) for 28x28 and 32x32 images: three stages of two 3x3
convolutions, each stage doubling the channels and halving the resolution."""

from __future__ import annotations

import torch
from torch import nn

from netshrink.errors import ConfigError
from netshrink.models.checks import check_data_args, check_width

# Channel multiples of the base width c; "M" is a 2x2 max pool.
_PLAN: tuple[int | str, ...] = (1, 1, "M", 2, 2, "M", 4, 4, "M")


class VGGSmall(nn.Module):
    """VGG-style classifier (Simonyan & Zisserman 2015): ``features`` then ``classifier``."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _make_features(in_channels: int, base: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for item in _PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out_channels = int(item) * base
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
    return VGGSmall(_make_features(in_channels, base, batch_norm), classifier)

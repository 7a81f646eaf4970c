"""MobileNetV2 (Sandler et al. 2018), layer for layer as torchvision builds it, so that the
parameter count and the ``state_dict`` keys match ``torchvision.models.mobilenet_v2``.

For inputs smaller than 64 pixels the stem and the second bottleneck stage use stride 1 (the usual
CIFAR adaptation): a 32x32 image then ends at 4x4 instead of 1x1.
"""

from __future__ import annotations

import torch
from torch import nn

from netshrink.models.checks import check_data_args, check_width

# (expansion t, output channels c, blocks n, first stride s): Sandler et al. 2018, Table 2.
_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_SMALL_INPUT = 64


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never below ``divisor`` nor more than 10%
    below ``value`` (torchvision's and the TensorFlow reference's rounding)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_act(
    in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=False),
    )


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck (Sandler et al. 2018): 1x1 expansion (omitted when
    t = 1), 3x3 depthwise, 1x1 linear projection; residual add when stride 1 and in == out."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(in_channels, hidden, kernel=1))
        layers += [
            _conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018): ``features``, global average pooling, ``classifier``."""

    def __init__(self, features: nn.Sequential, last_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))
        _init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _init_like_torchvision(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def _make_features(in_channels: int, width: float, small_input: bool) -> nn.Sequential:
    channels = _make_divisible(32 * width)
    layers: list[nn.Module] = [_conv_bn_act(in_channels, channels, stride=1 if small_input else 2)]
    for stage, (expand, base, blocks, stride) in enumerate(_SETTING):
        out_channels = _make_divisible(base * width)
        if small_input and stage == 1:
            stride = 1
        for index in range(blocks):
            layers.append(
                InvertedResidual(channels, out_channels, stride if index == 0 else 1, expand)
            )
            channels = out_channels
    layers.append(_conv_bn_act(channels, _make_divisible(1280 * max(1.0, width)), kernel=1))
    return nn.Sequential(*layers)


def mobilenet_v2(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0
) -> MobileNetV2:
    """MobileNetV2 of Sandler et al. 2018 with torchvision's layer structure and channel rounding.

    Args:
        width: the width multiplier; channels are rounded to multiples of 8, and the last 1x1
            convolution never narrows below 1280.

    With ``num_classes=1000`` and ``width=1.0`` it has torchvision's 3,504,872 parameters.
    ``input_size < 64`` uses the CIFAR strides (total stride 8), larger inputs the ImageNet
    ones (total stride 32); needs ``input_size >= 8``.

    Example:
        >>> mobilenet_v2(width=0.5)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_data_args("mobilenet_v2", num_classes, in_channels, input_size, min_size=8)
    width = check_width("mobilenet_v2", width)
    features = _make_features(in_channels, width, small_input=input_size < _SMALL_INPUT)
    return MobileNetV2(features, _make_divisible(1280 * max(1.0, width)), num_classes)

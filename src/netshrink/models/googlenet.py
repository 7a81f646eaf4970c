"""GoogLeNet (Szegedy et al. 2015, "Going deeper with convolutions"), CIFAR-style: the nine
inception blocks 3a..5b of the paper's Table 1 at full depth, with a width multiplier.

The ImageNet stem (7x7/2 convolution, max pools, local response normalization, 1x1 and 3x3
convolutions) becomes one 3x3 convolution to 192 channels at stride 1, as in the common CIFAR
adaptation; the two max pools between the inception stages (3x3, stride 2) are kept, then global
average pooling, dropout 0.4 and one linear layer. Every convolution is followed by BatchNorm (so
it has no bias) and its own ReLU. The 5x5 branch is the paper's 5x5 convolution (torchvision's
GoogLeNet has a 3x3 there). The auxiliary classifiers, a training aid, are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from netshrink.models.checks import check_data_args, check_width

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection): Szegedy et al. 2015, Table 1.
_BLOCKS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
_STEM = 192
_POOL_AFTER = ("3b", "4e")  # a 3x3 stride-2 max pool follows these blocks


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    )


class Inception(nn.Module):
    """An inception block (Szegedy et al. 2015, Figure 2b): 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max
    pool -> 1x1 projection; the four outputs concatenated along the channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        c1, r3, c3, r5, c5, pool = widths
        self.branch1 = _conv_bn_relu(in_channels, c1, 1)
        self.branch2 = nn.Sequential(_conv_bn_relu(in_channels, r3, 1), _conv_bn_relu(r3, c3, 3))
        self.branch3 = nn.Sequential(_conv_bn_relu(in_channels, r5, 1), _conv_bn_relu(r5, c5, 5))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(in_channels, pool, 1)
        )
        self.out_channels = c1 + c3 + c5 + pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)


class GoogLeNet(nn.Module):
    """GoogLeNet (Szegedy et al. 2015): ``stem``, ``inception3a`` .. ``inception5b`` with
    ``maxpool3`` and ``maxpool4`` between the stages, global average pooling, dropout, ``fc``."""

    def __init__(self, num_classes: int, in_channels: int, width: float) -> None:
        super().__init__()
        channels = max(1, round(_STEM * width))
        self.stem = _conv_bn_relu(in_channels, channels, 3)
        for name, widths in _BLOCKS.items():
            block = Inception(channels, tuple(max(1, round(c * width)) for c in widths))
            self.add_module(f"inception{name}", block)
            if name in _POOL_AFTER:
                self.add_module(f"maxpool{name[0]}", nn.MaxPool2d(3, stride=2, padding=1))
            channels = block.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He et al. 2015, fan-in mode: each branch keeps its input's scale, so an untrained
                # model's logits stay near 1 (fan-out mode grows them about 40x over the blocks)
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4c(self.inception4b(self.inception4a(x)))
        x = self.maxpool4(self.inception4e(self.inception4d(x)))
        x = self.inception5b(self.inception5a(x))
        return self.fc(self.dropout(self.flatten(self.pool(x))))


def googlenet(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: float = 1.0
) -> GoogLeNet:
    """GoogLeNet of Szegedy et al. 2015 (the network Kim et al. compress), CIFAR-style (see the
    module docstring): a 3x3 stem to 192 channels, inception blocks 3a, 3b, max pool, 4a..4e, max
    pool, 5a, 5b (55 convolutions in all), global average pooling, dropout 0.4, linear.

    Args:
        width: multiplies every convolution's width (rounded, at least 1); the paper's widths
            are ``width=1.0``, whose 3a and 3b blocks run at the full input resolution.

    5,871,914 parameters at the defaults (3x32x32, 10 classes). The head pools globally, so any
    ``input_size >= 4`` works: a 32x32 image reaches 4e at 16x16 and 5b at 8x8, an 8x8 one at
    4x4 and 2x2.

    Example:
        >>> googlenet(width=0.25)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_data_args("googlenet", num_classes, in_channels, input_size, min_size=4)
    width = check_width("googlenet", width)
    return GoogLeNet(num_classes, in_channels, width)

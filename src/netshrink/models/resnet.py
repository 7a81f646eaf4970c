"""ResNet-20 for CIFAR-sized images (He et al. 2016, section 4.2): a 3x3 stem, three stages of
BasicBlocks at widths w, 2w, 4w, global average pooling and one linear layer.

Shortcuts that change shape are 1x1 convolution + BatchNorm projections (the paper's option B),
not option A's zero padding: a projection is an ordinary layer that filter pruning can slice,
whereas zero-padded identity channels would tie the channel counts of a whole stage together.
"""

from __future__ import annotations

import torch
from torch import nn

from netshrink.errors import ConfigError
from netshrink.models.checks import check_data_args


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu_out = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al. 2016 with ``blocks_per_stage`` BasicBlocks in each of 3 stages
    (depth = 6 * blocks_per_stage + 2)."""

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = _make_stage(width, width, blocks_per_stage, stride=1)
        self.layer2 = _make_stage(width, 2 * width, blocks_per_stage, stride=2)
        self.layer3 = _make_stage(2 * width, 4 * width, blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He et al. 2015 initialisation, the one the ResNet paper trains from.
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet20(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: int = 16
) -> CifarResNet:
    """ResNet-20 for CIFAR-10 (He et al. 2016): 19 convolutions in 3 stages of 3 BasicBlocks at
    widths ``width``, 2*``width``, 4*``width`` (strides 1, 2, 2), global average pooling, linear.

    272,474 parameters at the defaults; He et al. report 0.27M for option A (zero-padded
    shortcuts), the two 1x1 projections of option B add the difference. Any ``input_size >= 4``
    works, since the head pools globally.

    Example:
        >>> resnet20()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_data_args("resnet20", num_classes, in_channels, input_size, min_size=4)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"resnet20: width must be a positive integer, got {width!r}")
    return CifarResNet(3, num_classes, in_channels, width)

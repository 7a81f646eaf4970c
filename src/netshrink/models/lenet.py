"""The LeNet family: LeNet-300-100 and Caffe's LeNet-5 as compressed by Han et al. 2015, and the
classic 6-16-120-84 LeNet-5 of LeCun et al. 1998 (with ReLU and max pooling).

Every activation is its own ``nn.ReLU`` module, never a shared one or a functional call, so that an
activation quantizer or a hook can be attached to one site without touching the others.
"""

from __future__ import annotations

import torch
from torch import nn

from netshrink.models.checks import check_data_args


class LeNet300100(nn.Module):
    """Fully connected 300-100 network (Han et al. 2015, after LeCun et al. 1998)."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * input_size * input_size, 300)
        self.relu1 = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU(inplace=False)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Classic LeNet-5, 6-16-120-84 (LeCun et al. 1998), with ReLU and max pooling."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        side = (input_size // 2 - 4) // 2
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU(inplace=False)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU(inplace=False)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.relu3 = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU(inplace=False)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet, 20-50-500 (Han et al. 2015): no ReLU after the convolutions, as in Caffe's
    ``lenet_train_test.prototxt`` that the Deep Compression numbers were measured on."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int) -> None:
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.relu1 = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc2(x)


def lenet300_100(
    *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28
) -> LeNet300100:
    """LeNet-300-100, the fully connected MNIST network pruned by Han et al. 2015 (from LeCun et
    al. 1998): Flatten -> 300 -> ReLU -> 100 -> ReLU -> ``num_classes``.

    266,610 parameters at the defaults (1x28x28, 10 classes).

    Example:
        >>> sum(p.numel() for p in lenet300_100().parameters())
        266610
    """
    check_data_args("lenet300_100", num_classes, in_channels, input_size)
    return LeNet300100(num_classes, in_channels, input_size)


def lenet5(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> LeNet5:
    """LeNet-5 of LeCun et al. 1998 (6-16-120-84), the modern variant with ReLU and max pooling;
    the first convolution pads by 2 so that 28x28 MNIST sees the 32x32 geometry of the paper.

    61,706 parameters at the defaults; needs ``input_size >= 12``.

    Example:
        >>> lenet5(input_size=32)(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    check_data_args("lenet5", num_classes, in_channels, input_size, min_size=12)
    return LeNet5(num_classes, in_channels, input_size)


def lenet5_caffe(
    *, num_classes: int = 10, in_channels: int = 1, input_size: int = 28
) -> LeNet5Caffe:
    """Caffe's LeNet (20-50-500), the "LeNet-5" of Han et al. 2015 (Deep Compression): conv 5x5
    20 -> pool -> conv 5x5 50 -> pool -> fc 500 -> ReLU -> fc ``num_classes``.

    431,080 parameters at the defaults; needs ``input_size >= 16``.

    Example:
        >>> sum(p.numel() for p in lenet5_caffe().parameters())
        431080
    """
    check_data_args("lenet5_caffe", num_classes, in_channels, input_size, min_size=16)
    return LeNet5Caffe(num_classes, in_channels, input_size)

"""DenseNet-BC (Huang et al. 2017, "Densely connected convolutional networks"): dense blocks in
which every layer reads the concatenation of all earlier outputs of its block, with bottleneck
layers (B) and transitions that halve the channels (C, compression 0.5).

Module names follow torchvision's DenseNet (``features.denseblock1.denselayer1.conv1``,
``features.transition1.conv``, ``features.norm5``, ``classifier``). Each dense layer returns
``cat([x, new])``, the plain form (not the memory-efficient checkpointed one), so the model
traces with torch.fx; each activation is its own ``nn.ReLU`` module.

Inputs smaller than 64 pixels get the CIFAR stem (one 3x3 convolution to 2k channels, then the
first block at full resolution); larger ones the ImageNet stem (7x7/2 convolution, BatchNorm,
ReLU, 3x3/2 max pool), so that DenseNet-201 at 224x224 is torchvision's layer for layer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from netshrink.errors import ConfigError
from netshrink.models.checks import check_data_args

_BOTTLENECK = 4  # the 1x1 convolution's width in growth rates (torchvision's bn_size)
_SMALL_INPUT = 64
_MAX_BLOCKS = 8
# DenseNet-264 has 130 dense layers, the paper's deepest CIFAR network (L=250, BC) 123: the
# bound keeps a file's model arguments from building millions of modules.
_MAX_LAYERS = 512
_DEFAULT_DEPTH = 40


class DenseLayer(nn.Module):
    """Bottleneck layer (DenseNet-B): BN-ReLU-1x1 conv (4k) -BN-ReLU-3x3 conv (k), its k new
    channels concatenated after its input's."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_channels, _BOTTLENECK * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(_BOTTLENECK * growth)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(_BOTTLENECK * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(self.relu1(self.norm1(x)))
        new = self.conv2(self.relu2(self.norm2(new)))
        return torch.cat([x, new], 1)


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """DenseNet-C transition: BN-ReLU-1x1 conv to half the channels, 2x2 average pool."""
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm2d(in_channels),
            relu=nn.ReLU(inplace=False),
            conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            pool=nn.AvgPool2d(2, stride=2),
        )
    )


def _stem(in_channels: int, channels: int, small_input: bool) -> OrderedDict[str, nn.Module]:
    if small_input:
        return OrderedDict(conv0=nn.Conv2d(in_channels, channels, 3, padding=1, bias=False))
    return OrderedDict(
        conv0=nn.Conv2d(in_channels, channels, 7, stride=2, padding=3, bias=False),
        norm0=nn.BatchNorm2d(channels),
        relu0=nn.ReLU(inplace=False),
        pool0=nn.MaxPool2d(3, stride=2, padding=1),
    )


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al. 2017): ``features`` (stem, dense blocks and transitions, final
    BatchNorm), ReLU, global average pooling, ``classifier``."""

    def __init__(
        self, blocks: Sequence[int], growth: int, num_classes: int, in_channels: int, small: bool
    ) -> None:
        super().__init__()
        channels = 2 * growth
        layers = _stem(in_channels, channels, small)
        for index, size in enumerate(blocks, start=1):
            block = [DenseLayer(channels + i * growth, growth) for i in range(size)]
            layers[f"denseblock{index}"] = nn.Sequential(
                OrderedDict((f"denselayer{i + 1}", layer) for i, layer in enumerate(block))
            )
            channels += size * growth
            if index < len(blocks):
                layers[f"transition{index}"] = _transition(channels, channels // 2)
                channels //= 2
        layers["norm5"] = nn.BatchNorm2d(channels)
        self.features = nn.Sequential(layers)
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.features(x))
        return self.classifier(self.flatten(self.pool(x)))


def _block_sizes(depth: object, blocks: object) -> tuple[int, ...]:
    """The dense layers per block, from ``depth`` (3 blocks, DenseNet-BC's L = 6n + 4) or
    ``blocks``; ConfigError for anything else."""
    if depth is not None and blocks is not None:
        raise ConfigError("densenet: give depth or blocks, not both")
    if blocks is None:
        depth = _DEFAULT_DEPTH if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or depth % 6 != 4:
            raise ConfigError(
                f"densenet: depth must be 6n + 4 for n >= 1 (10, 16, ..., 40, 100, 190), "
                f"got {depth!r}"
            )
        blocks = ((depth - 4) // 6,) * 3
    if not isinstance(blocks, (list, tuple)) or not 1 <= len(blocks) <= _MAX_BLOCKS:
        raise ConfigError(
            f"densenet: blocks must be a list of 1 to {_MAX_BLOCKS} layer counts, got {blocks!r}"
        )
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in blocks):
        raise ConfigError(f"densenet: blocks must be positive integers, got {blocks!r}")
    if sum(blocks) > _MAX_LAYERS:
        raise ConfigError(f"densenet: at most {_MAX_LAYERS} dense layers, got {sum(blocks)}")
    return tuple(blocks)


def _min_size(blocks: int, input_size: int) -> int:
    """The smallest input that keeps a pixel through every transition's 2x2 pooling."""
    if input_size < _SMALL_INPUT:
        return 2 ** (blocks - 1)
    return max(_SMALL_INPUT, 4 * 2 ** (blocks - 1) - 3)  # the ImageNet stem divides by 4


def densenet(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    growth: int = 12,
    depth: int | None = None,
    blocks: Sequence[int] | None = None,
) -> DenseNet:
    """DenseNet-BC of Huang et al. 2017 (DenseNet-201 is what Shin & Oh compress): a stem of 2k
    channels, dense blocks of bottleneck layers with growth rate k, a compression-0.5
    transition (BN-ReLU-1x1 conv-2x2 average pool) between consecutive blocks, final
    BatchNorm-ReLU, global average pooling, linear. Pre-activation throughout: every BatchNorm
    comes before its convolution.

    Args:
        growth: the growth rate k, the new channels of each dense layer; this network's width.
        depth: DenseNet-BC's CIFAR depth L: three blocks of (L - 4) / 6 layers. The default is
            L = 40 (blocks (6, 6, 6)), which trains on a CPU; the paper's CIFAR networks are
            L = 100 and 190 with k = 12 and 40.
        blocks: the layers of each block instead of ``depth``, e.g. DenseNet-201's
            ``blocks=(6, 12, 48, 32)`` with ``growth=32`` (give one of depth and blocks).

    176,122 parameters at the defaults (3x32x32, 10 classes). ``blocks=(6, 12, 48, 32)``,
    ``growth=32`` with ``num_classes=1000`` and ``input_size=224`` is DenseNet-201 with
    torchvision's 20,013,928 parameters; at 32x32 with 10 classes (CIFAR stem) it has
    18,104,330. Under 64 pixels each block after the first halves the resolution, so n blocks
    need ``input_size >= 2**(n-1)``: 8x8 works for the default three blocks and for four.

    Example:
        >>> densenet(growth=6)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if isinstance(growth, bool) or not isinstance(growth, int) or growth < 1:
        raise ConfigError(f"densenet: growth must be a positive integer, got {growth!r}")
    sizes = _block_sizes(depth, blocks)
    min_size = _min_size(len(sizes), input_size) if isinstance(input_size, int) else 1
    check_data_args("densenet", num_classes, in_channels, input_size, min_size=min_size)
    return DenseNet(sizes, growth, num_classes, in_channels, input_size < _SMALL_INPUT)

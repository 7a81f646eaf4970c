"""Architectures in the styles users bring, for bench/architectures.py: plain PyTorch, written the
way the reference implementations write them (not bent to suit netshrink), small widths, 3x32x32
inputs, 10 classes, random weights. Each factory takes `num_classes`, `in_channels` and
`input_size`, so netshrink can build it as `arch_styles:NAME` (bench/ on the path).

The global pooling and flattening idioms vary on purpose (`nn.AdaptiveAvgPool2d`, `x.mean`,
`F.adaptive_avg_pool2d`, `F.avg_pool2d`, `nn.AvgPool2d`; `flatten`, `view(x.size(0), -1)`), as
they do across real code bases.
"""

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class SqueezeExcite(nn.Module):
    """Hu et al. 2018: x * sigmoid(fc(relu(fc(pool(x))))), the Linear form of the reference code."""

    def __init__(self, channels: int, reduction: int = 4, act: type = nn.ReLU) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            act(),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.size()
        y = self.pool(x).view(b, c)
        return x * torch.sigmoid(self.fc(y)).view(b, c, 1, 1)


class SEBlock(nn.Module):
    """A ResNet basic block with squeeze-and-excitation before the residual addition."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout))
        self.se = SqueezeExcite(cout)
        same = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if same else nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.se(self.body(x)) + self.shortcut(x))


class SENet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths=(16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(SEBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle, as torchvision writes it: view, transpose, view."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit (Ma et al. 2018): split, a 1x1-dw3x3-1x1 branch, concat, shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, half = stride, cout // 2
        if stride > 1:
            self.left = nn.Sequential(
                *conv_bn(cin, cin, 3, stride, cin), *conv_bn(cin, half, 1), nn.ReLU()
            )
        into = cin if stride > 1 else half
        self.right = nn.Sequential(
            *conv_bn(into, half, 1), nn.ReLU(), *conv_bn(half, half, 3, stride, half),
            *conv_bn(half, half, 1), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.right(x2)), dim=1)
        else:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths=(48, 96, 192)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 24), nn.ReLU())
        units, cin = [], 24
        for w in widths:
            units += [ShuffleUnit(cin, w, 2), ShuffleUnit(w, w, 1)]
            cin = w
        self.units = nn.Sequential(*units)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(self.stem(x))
        return self.fc(x.mean([2, 3]))


class DualPathBlock(nn.Module):
    """DPN (Chen et al. 2017): the first `res` channels are added to the input's (ResNet), the
    rest are concatenated to its dense part (DenseNet)."""

    def __init__(self, cin: int, res: int, growth: int, first: bool) -> None:
        super().__init__()
        self.res, mid = res, 32
        self.body = nn.Sequential(
            *conv_bn(cin, mid, 1), nn.ReLU(), *conv_bn(mid, mid, 3, 1, 4), nn.ReLU(),
            *conv_bn(mid, res + growth, 1),
        )  # fmt: skip
        self.project = nn.Sequential(*conv_bn(cin, res + growth, 1)) if first else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        x = self.project(x) if self.project is not None else x
        d = self.res
        dense = torch.cat([x[:, d:, :, :], out[:, d:, :, :]], dim=1)
        return F.relu(torch.cat([x[:, :d, :, :] + out[:, :d, :, :], dense], dim=1))


class DualPathNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 32), nn.ReLU(), nn.MaxPool2d(2))
        blocks, cin = [], 32
        for i, (res, growth) in enumerate([(32, 16), (32, 16), (64, 16), (64, 16)]):
            first = i in (0, 2)
            blocks.append(DualPathBlock(cin, res, growth, first))
            cin = (res + growth if first else cin) + growth
            if i == 1:
                blocks.append(nn.MaxPool2d(2))
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
        return self.fc(x.view(x.size(0), -1))


class PreActBlock(nn.Module):
    """He et al. 2016b: BN -> ReLU -> conv, twice; the shortcut taps the activated input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths=(16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [PreActBlock(cin, w, 1 if i == 0 else 2), PreActBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        out = F.avg_pool2d(out, out.size(3))
        return self.linear(out.view(out.size(0), -1))


class MBConv(nn.Module):
    """EfficientNet's inverted residual (Tan & Le 2019): 1x1 expand, depthwise, SE, 1x1 project,
    SiLU throughout, the residual only when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            *conv_bn(cin, mid, 1), nn.SiLU(), *conv_bn(mid, mid, 3, stride, mid), nn.SiLU(),
            SqueezeExcite(mid, 4 * expand, nn.SiLU), *conv_bn(mid, cout, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class EfficientNetLike(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 16), nn.SiLU())
        plan = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 40, 2), (40, 40, 1)]
        self.blocks = nn.Sequential(*(MBConv(a, b, s) for a, b, s in plan))
        self.head = nn.Sequential(*conv_bn(40, 128, 1), nn.SiLU())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Inception(nn.Module):
    """GoogLeNet's block (Szegedy et al. 2015): 1x1, 1x1-3x3, 1x1-3x3-3x3, maxpool-1x1, concat."""

    def __init__(self, cin: int, b1: int, b3: int, b5: int, bp: int) -> None:
        super().__init__()
        relu = nn.ReLU
        self.b1 = nn.Sequential(*conv_bn(cin, b1, 1), relu())
        self.b3 = nn.Sequential(*conv_bn(cin, b3, 1), relu(), *conv_bn(b3, b3), relu())
        self.b5 = nn.Sequential(
            *conv_bn(cin, b5, 1), relu(), *conv_bn(b5, b5), relu(), *conv_bn(b5, b5), relu()
        )
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), *conv_bn(cin, bp, 1), relu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class InceptionNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 32), nn.ReLU())
        self.a = Inception(32, 16, 24, 8, 8)
        self.b = Inception(56, 24, 32, 16, 16)
        self.pool = nn.MaxPool2d(2)
        self.c = Inception(88, 32, 48, 16, 16)
        self.fc = nn.Linear(112, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.b(self.a(self.pool(self.stem(x)))))
        x = nn.functional.adaptive_avg_pool2d(self.c(x), (1, 1))
        return self.fc(x.flatten(1))


class DenseLayer(nn.Module):
    """DenseNet-BC (Huang et al. 2017): BN-ReLU-1x1, BN-ReLU-3x3, concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2)
        )


class DenseNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, growth: int = 12) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 2 * growth, 3, padding=1, bias=False)]
        cin = 2 * growth
        for stage in range(3):
            for _ in range(4):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if stage < 2:
                layers.append(Transition(cin, cin // 2))
                cin //= 2
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(cin))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(F.relu(self.features(x)), 8)
        return self.linear(out.view(out.size(0), -1))


class MobileNetV1(nn.Module):
    """Howard et al. 2017: depthwise-separable convolutions (dw3x3-BN-ReLU6, 1x1-BN-ReLU6) and a
    global nn.AvgPool2d before the classifier."""

    PLAN = [(32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers, cin = [*conv_bn(in_channels, 32), nn.ReLU6(inplace=True)], 32
        for cout, stride in self.PLAN:
            layers += [*conv_bn(cin, cin, 3, stride, cin), nn.ReLU6(inplace=True)]
            layers += [*conv_bn(cin, cout, 1), nn.ReLU6(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.fc(x.view(-1, self.fc.in_features))


class ShuffleSplit(nn.Module):
    """ShuffleNetV2 as pytorch-cifar writes it (Ma et al. 2018): the split ratio times the
    channels read at run time, `c = int(x.size(1) * ratio)`, then two slices."""

    def __init__(self, ratio: float = 0.5) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor):
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class ShufflePermute(nn.Module):
    """The channel shuffle written view / permute / reshape (pytorch-cifar's ShuffleBlock)."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        g = self.groups
        return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class SplitUnit(nn.Module):
    """A stride-1 ShuffleNetV2 unit: split, 1x1-dw3x3-1x1 on one half, concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split, self.shuffle = ShuffleSplit(0.5), ShufflePermute()
        self.branch = nn.Sequential(
            *conv_bn(half, half, 1), nn.ReLU(), *conv_bn(half, half, 3, 1, half),
            *conv_bn(half, half, 1), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.split(x)
        return self.shuffle(torch.cat([x1, self.branch(x2)], 1))


class DownUnit(nn.Module):
    """A stride-2 ShuffleNetV2 unit: both branches see the whole input, concat, shuffle."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(*conv_bn(cin, cin, 3, 2, cin), *conv_bn(cin, mid, 1), nn.ReLU())
        self.right = nn.Sequential(
            *conv_bn(cin, mid, 1), nn.ReLU(), *conv_bn(mid, mid, 3, 2, mid),
            *conv_bn(mid, mid, 1), nn.ReLU(),
        )  # fmt: skip
        self.shuffle = ShufflePermute()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths=(32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 24), nn.ReLU())
        units, cin = [], 24
        for w in widths:
            units += [DownUnit(cin, w), SplitUnit(w)]
            cin = w
        self.units = nn.Sequential(*units)
        self.head = nn.Sequential(*conv_bn(cin, 256, 1), nn.ReLU())
        self.linear = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool2d(self.head(self.units(self.stem(x))), 4)
        return self.linear(out.view(out.size(0), -1))


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """GhostNet's reference hard sigmoid, written out (not nn.Hardsigmoid)."""
    return F.relu6(x + 3.0) / 6.0


class GhostSE(nn.Module):
    """GhostNet's squeeze-and-excitation: 1x1 convs, the functional hard sigmoid as the gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce, self.expand = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * hard_sigmoid(self.expand(F.relu(self.reduce(self.pool(x)))))


class GhostModule(nn.Module):
    """Han et al. 2020: a primary 1x1 conv makes half the channels, a cheap depthwise conv the
    rest; concatenated, then sliced back to the odd width asked for (`out[:, :self.oup]`)."""

    def __init__(self, cin: int, oup: int, relu: bool = True) -> None:
        super().__init__()
        self.oup, init = oup, (oup + 1) // 2
        act = nn.ReLU(inplace=True) if relu else nn.Sequential()
        self.primary = nn.Sequential(*conv_bn(cin, init, 1), act)
        self.cheap = nn.Sequential(*conv_bn(init, init, 3, 1, init), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return out[:, : self.oup, :, :]


class GhostBottleneck(nn.Module):
    """Ghost module, a strided depthwise conv, SE, ghost module; `x += shortcut(residual)`."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        self.ghost1, self.ghost2 = GhostModule(cin, mid), GhostModule(mid, cout, relu=False)
        self.dw = nn.Sequential(*conv_bn(mid, mid, 3, stride, mid)) if stride > 1 else None
        self.se = GhostSE(mid, mid // 4) if se else None
        self.shortcut = nn.Sequential()
        if stride > 1 or cin != cout:
            self.shortcut = nn.Sequential(
                *conv_bn(cin, cin, 3, stride, cin), *conv_bn(cin, cout, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.ghost1(x)
        if self.dw is not None:
            x = self.dw(x)
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        x += self.shortcut(residual)
        return x


class GhostNet(nn.Module):
    PLAN = [(16, 16, 15, 1, False), (15, 32, 23, 2, False), (23, 48, 23, 1, False),
            (23, 64, 39, 2, True), (39, 96, 39, 1, True)]  # fmt: skip

    def __init__(self, num_classes: int, in_channels: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = dropout
        self.stem = nn.Sequential(*conv_bn(in_channels, 16), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(GhostBottleneck(*p) for p in self.PLAN))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv_head = nn.Conv2d(39, 128, 1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        x = F.relu(self.conv_head(x)).view(x.size(0), -1)
        if self.dropout > 0.0:
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.classifier(x)


class LambdaLayer(nn.Module):
    def __init__(self, lambd) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lambd(x)


class OptionABlock(nn.Module):
    """The CIFAR ResNet block of He et al. 2016 as the widely copied resnet.py writes it: option
    A, a parameter-free shortcut, `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))` in a lambda."""

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            pad = (0, 0, 0, 0, planes // 4, planes // 4)
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], pad, "constant", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


def resnet_stages(block, widths, blocks: int) -> nn.Sequential:
    """A CIFAR ResNet's stages: `blocks` blocks a width, the first of each later stage strided."""
    layers, cin = [], widths[0]
    for i, width in enumerate(widths):
        for j in range(blocks):
            layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
            cin = width
    return nn.Sequential(*layers)


class OptionAResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths=(8, 16, 32), blocks=2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layers = resnet_stages(OptionABlock, widths, blocks)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class ChannelGate(nn.Module):
    """CBAM's channel attention (Woo et al. 2018) as its reference code writes it: average and
    max pools whose kernel is read from x.size(), one shared MLP, sigmoid, expand_as(x)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
            nn.Linear(channels // reduction, channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.size(2), x.size(3))
        avg = self.mlp(F.avg_pool2d(x, size, stride=size))
        mx = self.mlp(F.max_pool2d(x, size, stride=size))
        return x * torch.sigmoid(avg + mx).unsqueeze(2).unsqueeze(3).expand_as(x)


class SpatialGate(nn.Module):
    """CBAM's spatial attention: max (`torch.max(x, 1)[0]`) and mean over channels, concat,
    7x7 conv + BN, sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(*conv_bn(2, 1, 7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAMBlock(nn.Module):
    """A ResNet basic block with CBAM (channel gate, then spatial gate) before the addition."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout))
        self.cbam = nn.Sequential(ChannelGate(cout), SpatialGate())
        same = stride == 1 and cin == cout
        self.shortcut = nn.Sequential() if same else nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cbam(self.body(x))
        out += self.shortcut(x)
        return F.relu(out)


class CBAMResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths=(16, 32, 48)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(CBAMBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        return self.linear(F.adaptive_avg_pool2d(out, 1).view(out.size(0), -1))


def drop_connect(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth as EfficientNet / MixNet code writes it: drop whole samples' branches."""
    keep = 1.0 - p
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class MixConv(nn.Module):
    """MixNet's mixed depthwise conv (Tan & Le 2019): torch.split into channel groups of listed
    sizes, one kernel size each (padding='same'), `zip(self.convs, torch.split(...))`, concat."""

    def __init__(self, channels: int, kernels=(3, 5, 7)) -> None:
        super().__init__()
        n = len(kernels)
        self.splits = [channels // n] * (n - 1) + [channels - channels // n * (n - 1)]
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, padding="same", groups=c, bias=False)
            for c, k in zip(self.splits, kernels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [conv(t) for conv, t in zip(self.convs, torch.split(x, self.splits, 1))], 1
        )


class MixBlock(nn.Module):
    """An inverted residual around MixConv; drop_connect on the branch `if self.training`."""

    def __init__(self, cin: int, cout: int, expand: int = 3, drop: float = 0.2) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(*conv_bn(cin, mid, 1), nn.SiLU(inplace=True))
        self.mix = nn.Sequential(MixConv(mid), nn.BatchNorm2d(mid), nn.SiLU(inplace=True))
        self.project = nn.Sequential(*conv_bn(mid, cout, 1))
        self.residual, self.drop = cin == cout, drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.mix(self.expand(x)))
        if not self.residual:
            return out
        if self.training:
            out = drop_connect(out, self.drop)
        return out + x


class MixNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 24), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(
            MixBlock(24, 24), nn.MaxPool2d(2), MixBlock(24, 40), MixBlock(40, 40), nn.MaxPool2d(2),
            MixBlock(40, 48), MixBlock(48, 48),
        )  # fmt: skip
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean([2, 3]))


class HardNet(nn.Module):
    """A plain VGG-style CNN with the idioms of older and quantization-minded code: Hardtanh
    (BinaryNet-style), a residual branch scaled by a number (`x + 0.5 * branch`, as Inception-
    ResNet scales its residuals), a final nn.AvgPool2d(3, 3, ceil_mode=True) whose edge windows
    are partial (8 -> 3), and the classifier fed by `x.view(-1, 64 * 9)`, a literal size."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(in_channels, 16), nn.Hardtanh(inplace=True), nn.MaxPool2d(2),
            *conv_bn(16, 32), nn.Hardtanh(inplace=True), nn.MaxPool2d(2),
            *conv_bn(32, 64), nn.Hardtanh(inplace=True),
        )  # fmt: skip
        self.branch = nn.Sequential(*conv_bn(64, 64, 1), nn.ReLU())
        self.pool = nn.AvgPool2d(3, 3, ceil_mode=True)
        self.fc = nn.Linear(64 * 9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x + 0.5 * self.branch(x))
        return self.fc(x.view(-1, 64 * 9))


class FixupBlock(nn.Module):
    """Fixup's basic block (Zhang, Dauphin & Ma 2019) as its reference code writes it: no batch
    norm; scalar biases and a scalar multiplier held as nn.Parameters, `x + self.bias1a`; the
    downsampling shortcut a strided 1x1 conv of the biased input."""

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias2b = nn.Parameter(torch.zeros(1))
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Conv2d(cin, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = self.conv2(out + self.bias2a) * self.scale + self.bias2b
        identity = x if self.downsample is None else self.downsample(x + self.bias1a)
        return F.relu(out + identity)


class FixupResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths=(8, 16, 32), blocks=2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bias1 = nn.Parameter(torch.zeros(1))
        self.layers = resnet_stages(FixupBlock, widths, blocks)
        self.bias2 = nn.Parameter(torch.zeros(1))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.conv1(x) + self.bias1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1) + self.bias2)


def pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding as TF-ported code writes it (timm's pad_same): computed from
    the input's size in the forward, the extra row and column at the end."""
    ih, iw = x.size()[-2:]
    pad_h = max((-(-ih // stride) - 1) * stride + kernel - ih, 0)
    pad_w = max((-(-iw // stride) - 1) * stride + kernel - iw, 0)
    return F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])


class PadSame(nn.Module):
    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_same(x, self.kernel, self.stride)


def conv_same(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Keras' ZeroPadding2D-then-Conv2D form of a 'SAME' convolution."""
    return nn.Sequential(PadSame(kernel, stride), nn.Conv2d(cin, cout, kernel, stride))


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: a Conv2d whose own forward pads 'SAME', then calls F.conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class TFPorted(nn.Module):
    """A network as ported from TensorFlow / Keras: 'SAME' convolutions (asymmetric F.pad; the
    last one timm's Conv2dSame, a Conv2d subclass that pads and convolves in its forward),
    ReLU6 written torch.clamp(x, 0, 6), an average pool that does not count its padding (TF's
    'SAME' pooling), nearest upsampling of a coarse branch added back, a reflection-padded
    conv, and an AdaptiveAvgPool2d((3, 3)) head on an 8 x 8 map (windows of 3 and 4 rows)."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = conv_same(in_channels, 16, 3, stride=2)
        self.down = conv_same(16, 32, 3, stride=2)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.coarse = nn.Conv2d(32, 32, 1)
        self.smooth = nn.Conv2d(32, 32, 3, padding=1, padding_mode="reflect")
        self.last = Conv2dSame(32, 32, 3)
        self.head = nn.AdaptiveAvgPool2d((3, 3))
        self.fc = nn.Linear(32 * 9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self.stem(x), 0, 6)
        x = self.pool(torch.clamp(self.down(x), 0, 6))
        coarse = F.interpolate(self.coarse(F.max_pool2d(x, 2)), scale_factor=2, mode="nearest")
        x = self.smooth(x + coarse).clamp(min=0)
        return self.fc(torch.flatten(self.head(torch.clamp(self.last(x), 0, 6)), 1))


def se_resnet(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Basic ResNet blocks with squeeze-and-excitation (x * sigmoid(fc(pool(x))))."""
    return SENet(num_classes, in_channels)


def shufflenet(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """ShuffleNetV2 units: chunk, branch, concat, channel shuffle (view / transpose / view)."""
    return ShuffleNet(num_classes, in_channels)


def dual_path(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """DPN blocks: channel slices, one part added (residual), the other concatenated (dense)."""
    return DualPathNet(num_classes, in_channels)


def preact_resnet(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> nn.Module:
    """Pre-activation ResNet: BN -> ReLU -> conv, no BN after any convolution."""
    return PreActResNet(num_classes, in_channels)


def efficientnet_like(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> nn.Module:
    """MBConv blocks: inverted residual, depthwise, SiLU, squeeze-and-excitation (SiLU too)."""
    return EfficientNetLike(num_classes, in_channels)


def inception(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Inception blocks: four parallel branches (one through max pooling), concatenated."""
    return InceptionNet(num_classes, in_channels)


def dense_blocks(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """DenseNet-BC: BN-ReLU-conv layers each concatenated to their input; average-pool transitions."""
    return DenseNet(num_classes, in_channels)


def mobilenet_v1(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Depthwise-separable convolutions with ReLU6, global nn.AvgPool2d, view to the classifier."""
    return MobileNetV1(num_classes, in_channels)


def shufflenet_v2(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> nn.Module:
    """ShuffleNetV2 (pytorch-cifar): split at int(x.size(1) * 0.5), concat, permute shuffle."""
    return ShuffleNetV2(num_classes, in_channels)


def ghostnet(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """GhostNet: ghost modules sliced to odd widths, SE gate relu6(x + 3) / 6, F.dropout head."""
    return GhostNet(num_classes, in_channels)


def resnet_option_a(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32
) -> nn.Module:
    """CIFAR ResNet-14, option-A shortcuts: LambdaLayer of F.pad(x[:, :, ::2, ::2], ...)."""
    return OptionAResNet(num_classes, in_channels)


def cbam_resnet(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """CBAM: channel gate pooled over x.size(), spatial gate of torch.max(x, 1)[0] and mean."""
    return CBAMResNet(num_classes, in_channels)


def mixnet(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """MixConv: zip(convs, torch.split(x, sizes, 1)), k 3/5/7; drop_connect if self.training."""
    return MixNet(num_classes, in_channels)


def hard_acts(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Hardtanh, a branch scaled by 0.5, AvgPool2d ceil_mode (partial windows), view(-1, 64 * 9)."""
    return HardNet(num_classes, in_channels)


def fixup_resnet(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Fixup ResNet: no batch norm, scalar nn.Parameter biases and multiplier (`x + self.bias1a`)."""
    return FixupResNet(num_classes, in_channels)


def tf_ported(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """Ported from TensorFlow: 'SAME' F.pad, Conv2dSame, clamp ReLU6, uneven average pools."""
    return TFPorted(num_classes, in_channels)


STYLES = {
    "se_resnet": se_resnet,
    "shufflenet": shufflenet,
    "dual_path": dual_path,
    "preact_resnet": preact_resnet,
    "efficientnet_like": efficientnet_like,
    "inception": inception,
    "dense_blocks": dense_blocks,
    "mobilenet_v1": mobilenet_v1,
    "shufflenet_v2": shufflenet_v2,
    "ghostnet": ghostnet,
    "resnet_option_a": resnet_option_a,
    "cbam_resnet": cbam_resnet,
    "mixnet": mixnet,
    "hard_acts": hard_acts,
    "fixup_resnet": fixup_resnet,
    "tf_ported": tf_ported,
}

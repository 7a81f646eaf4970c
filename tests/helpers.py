"""Helpers the tests share: a small zoo model trained on digits, a baseline checkpoint trained
through the CLI, random batch-norm statistics, the small models of the integer-path and C tests
(Attention, Branchy, Gates, OptionA, ShapeOps), and the gcc check. Imported as `from helpers import ...`
(tests/ is on sys.path, as the directory of the root conftest.py)."""

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netshrink.data import DataSplits
from netshrink.models import ModelSpec, build_model
from netshrink.train import FitConfig, fit

LENET300 = ModelSpec(name="lenet300_100")


def train_on_digits(
    digits: DataSplits, config: FitConfig, spec: ModelSpec = LENET300, seed: int = 0
) -> nn.Module:
    """The zoo model `spec` for digits (10 classes, 1x8x8), built after `torch.manual_seed(seed)`
    and trained with `config`, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(spec, num_classes=10, in_channels=1, input_size=8)
    fit(model, digits, config, progress=False)
    return model.eval()


def train_cli_baseline(out: Path, epochs: int) -> Path:
    """`netshrink train` of LeNet-300-100 on digits (batch size 64) to the checkpoint `out`."""
    from netshrink.cli import main

    argv = ["train", "--model", "lenet300_100", "--data", "digits", "--epochs", str(epochs)]
    assert main(argv + ["--batch-size", "64", "--out", str(out)]) == 0
    return out


def randomize_batchnorms(model: nn.Module, seed: int = 1) -> nn.Module:
    """`model` in eval mode with every BatchNorm2d's statistics and affine drawn at random (its
    scales spread over a decade), so that folding and fixed point meet real per-channel maps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.05)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


class Branchy(nn.Module):
    """Grouped, dilated, depthwise and 1x1 convs, concatenations (one under a ReLU), a padded
    average pool of signed values, a residual add, padded and adaptive max pools, a view."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu6 = nn.ReLU6()
        self.left = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.right = nn.Conv2d(8, 4, 1, bias=False)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.dw = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12)
        self.skip = nn.Conv2d(12, 12, 1, stride=2)
        self.max_pool = nn.MaxPool2d(3, 2, 1)
        self.adaptive = nn.AdaptiveMaxPool2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(24 * 9, 10)

    def forward(self, x):
        x = self.relu6(self.bn(self.stem(x)))
        y = self.pool(torch.cat([self.left(x), self.right(x)], dim=1))
        s = self.skip(y)
        z = torch.relu(self.dw(y) + s)
        u = F.relu(torch.cat([z, torch.relu(s)], dim=1))
        u = self.adaptive(self.max_pool(u))
        return self.fc(self.drop(u.view(u.size(0), -1)))


class Gates(nn.Module):
    """Squeeze-and-excitation (x * sigmoid(fc(pool(x)))), SiLU, hard-swish, hard-sigmoid (also
    written out: relu6(x + 3) / 6), tanh, hardtanh, a scaled branch (0.5 * x), SELU, softsign,
    log-sigmoid, abs, PReLU (a slope a channel) and GELU: products of two tensors and element-wise
    functions (lookup tables on a device)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze, self.excite = nn.Linear(8, 4), nn.Linear(4, 8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.Hardswish()
        self.prelu = nn.PReLU(8)
        with torch.no_grad():  # a slope a channel: a table a channel in C
            self.prelu.weight.copy_(torch.linspace(0.05, 0.4, 8))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = F.silu(self.stem(x))
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean((2, 3))))))
        x = x * gate.view(-1, 8, 1, 1)
        x = self.act(self.conv(x)) * F.hardsigmoid(x) + torch.tanh(x)
        x = x * (F.relu6(x + 3.0) / 6.0) + 0.5 * F.hardtanh(x)  # GhostNet's functional forms
        x = F.selu(x) + F.softsign(x) + F.logsigmoid(x).abs() + self.prelu(x)
        return self.head(F.gelu(x).mean((2, 3)))


class OptionA(nn.Module):
    """The CIFAR ResNet's option-A shortcut (He et al. 2016): the identity subsampled by a
    strided slice and its new channels zero-padded (F.pad), added to a strided block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2), "constant", 0)
        x = F.relu(self.conv(x) + shortcut)
        return self.fc(F.pad(x, (1, 0, -1, 1)).mean((2, 3)))  # spatial pads, one cropping


class Attention(nn.Module):
    """CBAM's gates (Woo et al. 2018): the max (`torch.max(x, 1)[0]`) and mean over the channels,
    concatenated, a conv and a sigmoid weighting the maps; then a per-map max (`amax`), a
    channel mean and a sum over the width added back, broadcast."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(2, 1, 7, padding=3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        pooled = torch.cat([torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)], 1)
        x = x * torch.sigmoid(self.gate(pooled))
        x = x + x.amax((2, 3), keepdim=True) + x.mean(1, keepdim=True) + x.sum(3, keepdim=True)
        return self.fc(x.mean((2, 3)))


class ShapeOps(nn.Module):
    """What outside networks do between layers: a channel shuffle (view / transpose / view with
    `c // groups` from the shape), a chunk, a channel slice, a global max pool broadcast back
    (CBAM: a window and stride from the shape, `expand_as`), and a global average pool whose
    window is the input's own size (`F.avg_pool2d(x, x.size(3))`)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 + 2, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        a, rest = x.chunk(2, dim=1)
        x = torch.cat([F.relu(self.left(a)), rest[:, :2]], dim=1)
        window = (x.size(2), x.size(3))
        x = x + F.max_pool2d(x, window, stride=window).expand_as(x)
        x = F.avg_pool2d(x, x.size(3))
        return self.head(x.flatten(1))


class Fixup(nn.Module):
    """Fixup's residual block (Zhang et al. 2019): scalar biases and a scalar multiplier held as
    nn.Parameters (`x + self.bias1a`), a per-channel offset buffer broadcast over the maps, and a
    difference of two tensors (each map minus the channel mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bias1a = nn.Parameter(torch.tensor([0.1]))
        self.bias1b = nn.Parameter(torch.tensor([-0.2]))
        self.scale = nn.Parameter(torch.tensor([1.5]))
        self.register_buffer("offset", torch.linspace(-0.5, 0.5, 8).view(1, 8, 1, 1))
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.conv(x + self.bias1a) * self.scale + self.bias1b
        x = F.relu(x + y) - x.mean(1, keepdim=True) + self.offset
        return self.fc(x.mean((2, 3)))


class Copies(nn.Module):
    """Ops that copy values and make none, and clamps between numbers, as other code writes
    them: ReLU / ReLU6 / hardtanh as clamps, nn.ZeroPad2d, replication and reflection padding,
    nearest upsampling (F.interpolate and nn.Upsample), a pixel shuffle and unshuffle, a flip
    of the width, view_as, and a conv that pads by reflection (padding_mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pad = nn.ZeroPad2d((1, 1, 0, 2))
        self.conv = nn.Conv2d(8, 8, 3)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.mix = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x).clamp(min=0)
        x = torch.clamp(self.conv(self.pad(x)), 0, 6)
        x = F.pad(x, (1, 1, 1, 1), mode="replicate") + F.pad(x, (1, 1, 1, 1), mode="reflect")
        x = self.up(F.max_pool2d(x, 2)) + F.interpolate(x, scale_factor=1, mode="nearest")
        x = F.pixel_unshuffle(F.pixel_shuffle(x, 2), 2) + x.flip(3).view_as(x)
        return self.fc(self.mix(x.clamp(-1, 1)).mean((2, 3)))


class SamePad(nn.Module):
    """TensorFlow's 'SAME' padding as TF-ported code computes it in the forward from the
    input's size (ceil division written -(-h // s), max(..., 0)), then a strided conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h, w = x.size()[-2:]
        pad_h, pad_w = (max((-(-n // 2) - 1) * 2 + 3 - n, 0) for n in (h, w))
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: a Conv2d subclass whose forward pads 'SAME' from the input's size,
    then convolves itself with F.conv2d (fx traces into it)."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.size()[-2:], self.kernel_size, self.stride, strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads = [total // 2, total - total // 2, *pads]
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class TfSame(nn.Module):
    """Two Conv2dSame layers (strided, one without a bias), each followed by batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = Conv2dSame(3, 8, 3, stride=2), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = Conv2dSame(8, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(F.relu(self.bn2(self.conv2(x))).mean((2, 3)))


# Average pools whose windows hold different numbers of values, each with an input side it
# pools unevenly: (pool, side).
UNEVEN_POOLS = {
    "uncounted-padding": (nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), 6),
    "ceil-mode": (nn.AvgPool2d(3, stride=2, ceil_mode=True), 6),  # the last window: 1 row
    "ceil-mode-counted-padding": (nn.AvgPool2d(3, 2, 1, ceil_mode=True), 8),  # 1 row + padding
    "adaptive": (nn.AdaptiveAvgPool2d(4), 7),  # windows of 2 and 3 rows
    "adaptive-upsampling": (nn.AdaptiveAvgPool2d((7, 5)), 3),  # torchvision's VGG on 32x32
}


def uneven_pool_net(case: str) -> tuple[nn.Module, int]:
    """conv 3x3 (no padding) -> UNEVEN_POOLS[case] -> flatten -> linear, and the image side."""
    pool, side = UNEVEN_POOLS[case]
    features = pool(torch.zeros(1, 4, side, side)).numel()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), pool, nn.Flatten(), nn.Linear(features, 10))
    return model.eval(), side + 2


def require_gcc() -> None:
    """Skip without gcc, except in CI (where .ci/run installs it): fail there."""
    if shutil.which("gcc") is None or shutil.which("size") is None:
        message = "gcc and binutils are not installed: apt-get install -y gcc binutils"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class MeanHead(nn.Module):
    """A global average pool written as a mean over the spatial dimensions (ShuffleNet,
    EfficientNet), once keeping the dimensions and once not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        a = x.mean((2, 3))
        b = torch.mean(x, dim=(-2, -1), keepdim=True).flatten(1)
        return self.head(torch.cat([a, b], dim=1))

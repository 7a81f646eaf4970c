"""Pre-activation batch norm in fixed point: a BatchNorm after an addition or a concatenation (a
DenseNet's, a pre-activation ResNet's) folds into no layer, so it runs as a per-channel integer
multiply-add, a depthwise 1x1 conv at 16 bits (netshrink.fold.batchnorms_as_convs). The integer
path is bit-identical to the fake-quantized model, the file and the checkpoint rebuild it, and
the C export computes the same integers."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import randomize_batchnorms, require_gcc
from netshrink.codec import pack, unpack
from netshrink.edits import BatchNormAsConv, structural_edits
from netshrink.errors import UnsupportedLayerError
from netshrink.export.c import build_and_run, export_c, quantize_input
from netshrink.fold import batchnorms_as_convs
from netshrink.models import build_model
from netshrink.quant import IntegerModel, QuantConfig, fixed_point_formats, quantize
from netshrink.replay import replay_edits


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv -> BN -> ReLU -> conv, plus the input: He et al.'s pre-activation."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.bn_out, self.fc = nn.BatchNorm2d(channels), nn.Linear(channels, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv1(torch.relu(self.bn1(x)))
        x = x + self.conv2(torch.relu(self.bn2(y)))
        return self.fc(torch.relu(self.bn_out(x)).mean((2, 3)))


def _images(n=16, seed=2):
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [
    lambda: PreActBlock(),
    lambda: build_model({"name": "densenet", "args": {"growth": 4, "depth": 16}}, num_classes=10,
                        in_channels=3, input_size=12),
])  # fmt: skip
def test_pre_activation_batch_norm_runs_on_integers_exactly(make):
    torch.manual_seed(0)
    model, x = randomize_batchnorms(make()), _images()
    qmodel = quantize(model, x, QuantConfig(weights=8, activations=8))
    converted = [e.bn for e in structural_edits(qmodel) if isinstance(e, BatchNormAsConv)]
    assert converted  # the BatchNorms after a join became layers, at 16 bits
    formats = fixed_point_formats(qmodel)
    assert {formats.weights[n].bits for n in converted} == {16}
    out = IntegerModel(qmodel).run(x)
    with torch.no_grad():
        expected = qmodel(x).double()
        floats = model(x)
    assert out.overflows == {} and torch.equal(out.logits, expected)
    assert (expected.argmax(1) == floats.argmax(1)).float().mean() >= 0.8  # 8/8 bits of random
    assert torch.corrcoef(torch.stack([expected.flatten(), floats.double().flatten()]))[0, 1] > 0.95


def test_the_file_rebuilds_the_converted_batch_norms(tmp_path):
    torch.manual_seed(0)
    model, x = randomize_batchnorms(PreActBlock()), _images()
    qmodel = quantize(model, x)
    decoded = unpack(pack(qmodel, tmp_path / "m.nsk"), PreActBlock())
    with torch.no_grad():
        assert torch.equal(decoded(x), qmodel(x))


def test_a_batch_norm_without_statistics_is_refused_by_name():
    model = PreActBlock()
    model.bn1 = nn.BatchNorm2d(8, track_running_stats=False)
    with pytest.raises(UnsupportedLayerError, match="bn1 keeps no running statistics"):
        batchnorms_as_convs(model.eval())
    with pytest.raises(UnsupportedLayerError, match="structural edit 0: fc is a Linear"):
        replay_edits(PreActBlock(), [BatchNormAsConv(bn="fc")])


def test_the_c_export_computes_the_same_integers(tmp_path):
    require_gcc()
    torch.manual_seed(0)
    model, x = randomize_batchnorms(PreActBlock()), _images()
    qmodel = quantize(model, x)
    export = export_c(qmodel, tmp_path / "out", (3, 12, 12))
    logits = build_and_run(export, quantize_input(x, export), tmp_path / "build")
    np.testing.assert_array_equal(logits, IntegerModel(qmodel).run(x).integers.numpy())


def test_pruning_leaves_the_batch_norm_scales_unless_named():
    # a batch norm held as a depthwise conv has one scale a channel: pruning it by magnitude
    # (per layer: 80% of them) would zero whole channels, so the methods' default layers skip it
    from netshrink.layers import select_layers
    from netshrink.prune.magnitude import LayerSparsity, PruneMagnitudeConfig, prune_magnitude

    torch.manual_seed(0)
    model, x = randomize_batchnorms(PreActBlock()), _images()
    qmodel = quantize(model, x, QuantConfig(weights=8, activations=8))
    held = [e.bn for e in structural_edits(qmodel) if isinstance(e, BatchNormAsConv)]
    chosen = [n for n, _ in select_layers(qmodel)]
    assert held and not set(held) & set(chosen) and "conv1" in chosen
    assert set(held) <= {n for n, _ in select_layers(qmodel, scales=True)}
    config = PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=0.8))
    prune_magnitude(qmodel, config)
    for name in held:
        assert bool(qmodel.get_submodule(name).weight.ne(0).all())
    assert float(qmodel.conv1.weight.eq(0).float().mean()) >= 0.75
    prune_magnitude(qmodel, config, layers=[held[0]])  # named: pruned as asked
    assert float(qmodel.get_submodule(held[0]).weight.eq(0).float().mean()) >= 0.75

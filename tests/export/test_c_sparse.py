"""The C export's sparse form (netshrink.export.c_sparse): pruned layers stored as relative
indices + codebook indices and walked by the kernels, bit-exact with the integer path, and each
layer stored in the least flash of dense, codebook and sparse."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import Branchy, randomize_batchnorms, require_gcc
from netshrink.errors import ConfigError
from netshrink.export.c import build_and_run, export_c, quantize_input
from netshrink.quant import IntegerModel, QuantConfig, quantize


def _prune(model: nn.Module, keep: float, seed: int = 0) -> nn.Module:
    """Zero all but a random `keep` share of every conv / linear weight (a pruned model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_((torch.rand(m.weight.shape, generator=g) < keep).float())
    return model.eval()


def _bit_exact(qmodel, images, out, shape, storage):
    export = export_c(qmodel, out / "c", shape, storage=storage)
    logits = build_and_run(export, quantize_input(images, export), out / "build")
    np.testing.assert_array_equal(logits, IntegerModel(qmodel).run(images).integers.numpy())
    return export


@pytest.mark.parametrize(
    "config",
    [
        QuantConfig(),
        QuantConfig(weights=4),
        QuantConfig(weights=12, activations=12, bias=24, accumulator=24),
        QuantConfig(ties="even"),  # requantization rounds ties to even (shifts and divisions)
    ],
    ids=["w8", "w4", "w12a12", "ties-even"],
)
def test_pruned_branchy_model_runs_sparse_bit_exact(tmp_path, config):
    # grouped, dilated, depthwise, strided and padded convs (windows cut by the border), 1x1
    # convs and a linear layer, every one of them walked from its relative indices
    require_gcc()
    torch.manual_seed(2)
    images = torch.randn(40, 3, 16, 16)
    qmodel = quantize(_prune(randomize_batchnorms(Branchy()), keep=0.3), images, config)
    export = _bit_exact(qmodel, images[:24], tmp_path, (3, 16, 16), "sparse")
    assert {s.form for s in export.layers} == {"sparse"}
    source = export.source.read_text()
    assert "ns_field(ws_" in source and "static const int8_t w_" not in source
    if config.ties == "even":
        assert "ns_shr_even(v" in source and "ns_div_even(v" in source


class Rows(nn.Module):
    """A linear layer on the last axis (many rows: the listed walk) between a conv and a
    linear on one row (the walk that multiplies as it goes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rows = nn.Linear(8, 6)
        self.fc = nn.Linear(4 * 8 * 6, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.rows(torch.relu(self.conv(x)))), 1))


def _rows_model() -> Rows:
    torch.manual_seed(4)
    model = Rows().eval()
    with torch.no_grad():
        model.rows.weight[2:4] = 0  # empty rows: the stream runs on past them
        fc = torch.zeros_like(model.fc.weight)
        fc[:, :40] = torch.randn(10, 40)  # short gaps, then 152 zeros: fillers at a small width
        fc[3:5] = 0
        model.fc.weight.copy_(fc)
        model.conv.weight.copy_(model.conv.weight.sign() * 0.25)  # one value per sign
        model.conv.weight[0] = 0.25  # ... and one output channel with a single value
    return model


def test_fillers_empty_rows_and_listed_rows_are_bit_exact(tmp_path):
    require_gcc()
    images = torch.randn(40, 1, 8, 8)
    qmodel = quantize(_rows_model(), images, QuantConfig())
    export = _bit_exact(qmodel, images[:24], tmp_path, (1, 8, 8), "sparse")
    fc = next(s for s in export.layers if s.name == "fc")
    assert (1 << fc.gap_bits) - 1 < 152  # the run of zeros needs fillers
    conv = next(s for s in export.layers if s.name == "conv")
    assert conv.codebook == 2 and conv.index_bits == 1


def test_smallest_storage_takes_the_least_flash_per_layer(tmp_path):
    torch.manual_seed(5)
    images = torch.randn(40, 3, 16, 16)
    model = randomize_batchnorms(Branchy())
    dense_q = quantize(model, images, QuantConfig())
    pruned_q = quantize(_prune(model, keep=0.1), images, QuantConfig())
    full = export_c(dense_q, tmp_path / "full", (3, 16, 16))
    assert "sparse" not in {s.form for s in full.layers}  # nothing to skip: no sparse form
    forms = {
        storage: export_c(pruned_q, tmp_path / storage, (3, 16, 16), storage=storage)
        for storage in ("smallest", "dense", "sparse")
    }
    assert {s.form for s in forms["dense"].layers} == {"dense"}
    for chosen, dense, sparse in zip(*(forms[k].layers for k in ("smallest", "dense", "sparse"))):
        assert chosen.bytes == min(dense.bytes, sparse.bytes, chosen.bytes)
        assert chosen.bytes <= dense.bytes
    # 10% of the weights kept at 8 bits: a sparse layer stores about 1.5 bytes a non-zero
    assert forms["smallest"].weight_bytes < forms["dense"].weight_bytes / 3
    assert "sparse" in forms["smallest"].describe()


def test_unknown_storage_is_refused(tmp_path):
    images = torch.randn(8, 1, 8, 8)
    qmodel = quantize(_rows_model(), images, QuantConfig(calibration_images=8))
    with pytest.raises(ConfigError, match="storage must be one of"):
        export_c(qmodel, tmp_path, (1, 8, 8), storage="csr")

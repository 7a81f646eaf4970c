"""Size accounting of shared layers (netshrink.measure): indices at their bits, codebooks and
scales at 32 bits, Deep Compression's rate exactly for a single layer, relative indices with
filler zeros for pruned layers."""

import math

import pytest
import torch
from torch import nn

from netshrink.measure import (
    deep_compression_rate,
    dense_bytes,
    relative_index_entries,
    storage_bytes,
    storage_report,
)
from netshrink.models import vgg_small
from netshrink.prune import PruneMagnitudeConfig, StdThreshold, prune_magnitude
from netshrink.share import (
    ShareBinaryConfig,
    ShareKmeansConfig,
    SharePqConfig,
    ShareRqConfig,
    share_binary,
    share_kmeans,
    share_pq,
    share_rq,
)


def _weight_row(model, name="0.weight"):
    return next(r for r in storage_report(model) if r.name == name)


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_the_deep_compression_rate_comes_out_exactly_for_one_layer(bits):
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    share_kmeans(model, ShareKmeansConfig(bits=bits), progress=False)
    row = _weight_row(model)
    n, k = 64 * 32, 2**bits
    assert row.method == "kmeans"
    assert row.index_bits == n * bits and row.codebook_bits == 32 * k
    assert row.ratio == deep_compression_rate(n, k) == n * 32 / (n * math.log2(k) + 32 * k)
    assert storage_bytes(model) == math.ceil((n * bits + 32 * k) / 8)


def test_the_papers_toy_example():
    # Han et al. 2016, figure 3: 16 weights shared among 4 centroids
    assert deep_compression_rate(16, 4) == pytest.approx(16 * 32 / (16 * 2 + 4 * 32))
    with pytest.raises(ValueError):
        deep_compression_rate(0, 4)


def test_relative_indices_need_filler_zeros_for_long_gaps():
    keep = torch.zeros(40, dtype=torch.bool)
    keep[[0, 3, 4, 30]] = True
    # gaps 1, 3, 1, 26 with 3-bit positions (at most 8 a step): 1 + 1 + 1 + 4 entries
    assert relative_index_entries(keep, 3) == 7
    assert relative_index_entries(keep, 5) == 4
    assert relative_index_entries(torch.zeros(5, dtype=torch.bool), 3) == 0


def test_an_uncompressed_model_costs_its_dense_bytes():
    model = vgg_small(width=0.25)
    assert storage_bytes(model) == dense_bytes(model)
    assert {r.method for r in storage_report(model)} == {"dense"}


def test_pruned_and_shared_layers_count_positions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 50, bias=False))
    prune_magnitude(model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.5)))
    keep = model[0].weight != 0
    entries = relative_index_entries(keep, 5)
    pruned = _weight_row(model)
    assert pruned.method == "sparse" and pruned.index_bits == entries * (32 + 5)
    share_kmeans(model, ShareKmeansConfig(bits=4), progress=False)
    shared = _weight_row(model)
    assert shared.index_bits == min(entries * (4 + 5), 5000 * 5)
    assert shared.codebook_bits == 16 * 32


def test_vector_and_sign_codebooks_count_their_parts():
    model = nn.Sequential(nn.Linear(12, 10, bias=False))
    share_pq(model, SharePqConfig(segment=4, k=8), progress=False)
    row = _weight_row(model)
    # 3 segments x 10 sub-vectors x 3 bits; 3 codebooks of 8 x 4 floats
    assert (row.method, row.index_bits, row.codebook_bits) == ("pq", 90, 3 * 8 * 4 * 32)
    model = nn.Sequential(nn.Linear(12, 10, bias=False))
    share_rq(model, ShareRqConfig(stages=2, k=4), progress=False)
    row = _weight_row(model)
    # whole rows: 2 stages x 10 rows x 2 bits; 2 codebooks of 4 x 12
    assert (row.method, row.index_bits, row.codebook_bits) == ("rq", 40, 2 * 4 * 12 * 32)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False))
    share_binary(model, ShareBinaryConfig(scale="channel"), progress=False)
    row = _weight_row(model)
    assert (row.method, row.index_bits, row.codebook_bits) == ("binary", 108, 4 * 32)

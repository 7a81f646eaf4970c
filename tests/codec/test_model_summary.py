"""summarize_model / packed_bytes: what netshrink reports a model stores is its .nsk file. For
every method that packs, the size is the file's length to the byte and the per-tensor rows are
`inspect`'s rows of the written file; the CLI's stage table reports the same size."""

import argparse
import math

import pytest
import torch

from netshrink import share
from netshrink.checkpoint import CheckpointMeta
from netshrink.cli.common import measure_stage
from netshrink.codec import ENCODINGS, PackConfig, pack, packed_bytes, summarize, summarize_model
from netshrink.codec.summary import print_summary
from netshrink.models import ModelSpec, build_model
from netshrink.prune import (
    PruneFiltersConfig,
    PruneMagnitudeConfig,
    StdThreshold,
    prune_filters,
    prune_magnitude,
)
from netshrink.quant import QuantConfig, quantize
from netshrink.share.codebooks import VectorCodebook

SPEC = ModelSpec(name="vgg_small", args={"width": 0.25})  # 21k parameters, conv + BN + linear


def _build() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC, num_classes=10, in_channels=1, input_size=8).eval()


METHODS = {
    "prune_magnitude": lambda m, d: prune_magnitude(
        m, PruneMagnitudeConfig(threshold=StdThreshold(ratio=1.0))
    ),
    "prune_filters": lambda m, d: prune_filters(m, PruneFiltersConfig(amount=0.3), d.input_shape),
    "share_kmeans": lambda m, d: share.share_kmeans(
        m, share.ShareKmeansConfig(bits=3), progress=False
    ),
    "share_pq": lambda m, d: share.share_pq(m, share.SharePqConfig(segment=4, k=8), progress=False),
    "share_rq": lambda m, d: share.share_rq(m, share.ShareRqConfig(stages=2, k=4), progress=False),
    "share_binary_layer": lambda m, d: share.share_binary(
        m, share.ShareBinaryConfig(scale="layer"), progress=False
    ),
    "share_binary_channel": lambda m, d: share.share_binary(
        m, share.ShareBinaryConfig(scale="channel"), progress=False
    ),
    "share_ternary": lambda m, d: share.share_binary(
        m, share.ShareBinaryConfig(ternary=True), progress=False
    ),
    "factor_svd": lambda m, d: share.factor_svd(m, share.FactorSvdConfig(rank=4), progress=False),
    "quantize": lambda m, d: quantize(m, d, QuantConfig(calibration_images=128)),
}


def _compressed(method: str, digits) -> torch.nn.Module:
    model = _build()
    out = METHODS[method](model, digits)
    return out if isinstance(out, torch.nn.Module) else model


@pytest.mark.parametrize("method", list(METHODS))
def test_the_reported_size_and_rows_are_the_packed_files(method, digits, tmp_path):
    model = _compressed(method, digits)
    meta = CheckpointMeta(model=SPEC, input_shape=digits.input_shape, num_classes=10)
    for config, fields in [(PackConfig(), {}), (PackConfig(index_bits="best"), {"meta": meta})]:
        summary = summarize_model(model, config, **fields)
        path = pack(model, tmp_path / f"{method}.nsk", config, **fields)
        size = path.stat().st_size
        assert summary.size == size == len(packed_bytes(model, config, **fields))
        assert path.read_bytes() == packed_bytes(model, config, **fields)
        inspected = summarize(path)
        assert summary.tensors == inspected.tensors
        assert summary.header_bytes == inspected.header_bytes
        assert summary.header == inspected.header
    # the CLI's stage table (default pack config, no sidecar) reports that same file's size
    args = argparse.Namespace(batch_size=256, no_latency=True)
    row = measure_stage(model, method, digits, args)
    assert row.size_bytes == pack(model, tmp_path / "plain.nsk").stat().st_size
    assert row.bits_per_weight == 8 * row.size_bytes / row.params


@pytest.mark.parametrize("method", ["share_pq", "share_rq"])
def test_vector_codebooks_are_reported_as_what_the_file_holds(method, digits):
    # A PQ / RQ weight is stored as its codebooks and codes (the `vector` encoding) wherever
    # that beats its values: at most the paper's count, indices at ceil(log2 k) bits plus the
    # codebooks at 32 bits, plus the last byte of the code stream.
    model = _compressed(method, digits)
    rows = {r.name: r for r in summarize_model(model).tensors}
    claimed = 0
    for name, module in model.named_modules():
        chain = getattr(getattr(module, "parametrizations", None), "weight", None)
        if chain is None or not isinstance(chain[0], VectorCodebook):
            continue
        row, books = rows[f"{name}.weight"], chain[0]
        assert row.encoding.split()[0] in ENCODINGS
        k = books.codebooks.shape[2]
        estimate = books.indices.numel() * math.ceil(math.log2(k))
        estimate += 32 * books.codebooks.numel()
        if estimate < 32 * row.numel:
            claimed += 1
            assert row.encoding.startswith("vector")
            assert 8 * row.nbytes <= estimate + 7
        if row.encoding == "dense":
            assert row.nbytes == 4 * row.numel
    assert claimed  # the larger layers (3x3x16x16, 64x32, ...)


def test_per_channel_binary_scales_cost_what_the_file_spends_on_them(digits):
    model = _compressed("share_binary_channel", digits)
    rows = {r.name: r for r in summarize_model(model).tensors}
    conv = rows["features.0.weight"]
    channels = conv.shape[0]
    # one float32 scale a channel and one sign bit a weight (the `sign` encoding), where a
    # scalar codebook would need 2 x channels entries and 4-bit indices
    assert conv.encoding == "sign"
    assert [s.role for s in conv.sections] == ["scales", "signs"]
    assert conv.nbytes <= 4 * channels + math.ceil(conv.numel / 8)
    assert sum(s.nbytes for s in conv.sections) == conv.nbytes


def test_the_information_floor_is_below_the_file_by_the_coders_overhead(digits, capsys):
    # pruned and shared: relative and codebook indices coded near their order-0 entropy
    model = _compressed("prune_magnitude", digits)
    share.share_kmeans(model, share.ShareKmeansConfig(bits=3), progress=False)
    summary = summarize_model(model, PackConfig(index_bits="best"))
    streams = [s for t in summary.tensors for s in t.sections if s.entropy_bytes is not None]
    raw = sum(s.nbytes for t in summary.tensors for s in t.sections if s.entropy_bytes is None)
    assert streams and all(s.entropy_bytes <= s.nbytes + 1e-9 for s in streams)
    overhead = summary.size - summary.floor_bytes
    assert overhead == pytest.approx(sum(s.nbytes - s.entropy_bytes for s in streams))
    assert summary.floor_bytes > summary.header_bytes + raw  # the streams carry information
    assert 0 < overhead < 0.2 * summary.size  # tables and rounding: a few percent here
    print_summary(summary)
    assert "information floor" in capsys.readouterr().out

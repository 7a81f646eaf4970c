"""The `vector` (product / residual quantization) and `sign` (binarization) encodings, Gong et
al. 2014: an exact round trip that gives back the parametrization, a file the size the method
stores, and a damaged header refused with a netshrink error."""

import math
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from torch import nn

from netshrink.codec import PackConfig, pack, packed_bytes, summarize_model, unpack
from netshrink.codec.container import VERSION
from netshrink.codec.encodings import decode_tensor, encode_tensor, working_bytes
from netshrink.codec.header import TensorRecord
from netshrink.codec.shared import VectorParts
from netshrink.errors import CorruptFileError
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
from netshrink.share.codebooks import VectorCodebook, shared_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import forge  # noqa: E402

IN, HIDDEN, OUT = 256, 128, 10


def _fresh() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT)).eval()


def _pruned() -> nn.Module:
    return prune_magnitude(_fresh(), PruneMagnitudeConfig(threshold=StdThreshold(ratio=0.8)))


METHODS = {
    "pq": lambda: share_pq(_fresh(), SharePqConfig(segment=8, k=16), progress=False),
    "pq columns, padded": lambda: share_pq(
        _fresh(), SharePqConfig(segment=6, k=16, axis="columns"), progress=False
    ),
    "rq": lambda: share_rq(_fresh(), ShareRqConfig(stages=3, k=8, segment=4), progress=False),
    "rq pruned": lambda: share_rq(
        _pruned(), ShareRqConfig(stages=2, k=8, segment=8), progress=False
    ),
    "binary": lambda: share_binary(_fresh(), ShareBinaryConfig(scale="channel"), progress=False),
    "ternary pruned": lambda: share_binary(
        _pruned(), ShareBinaryConfig(scale="channel", ternary=True), progress=False
    ),
}


def _pack(model, tmp_path, name="m.nsk") -> Path:
    return pack(model, tmp_path / name, PackConfig(index_bits="best"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_round_trip_is_exact_and_gives_back_the_parametrization(method, tmp_path):
    model = METHODS[method]()
    decoded = unpack(_pack(model, tmp_path), model=_fresh())
    before, after = dict(shared_layers(model)), dict(shared_layers(decoded))
    assert "0.weight" in after and set(after) <= set(before)  # the head may be stored dense
    for name, layer in (("0", model[0]), ("2", model[2])):
        restored = decoded.get_submodule(name)
        assert torch.equal(restored.weight, layer.weight), name
        assert torch.equal(restored.weight.ne(0), layer.weight.ne(0)), name  # no stray zeros
    old, new = before["0.weight"], after["0.weight"]
    assert type(new) is type(old)
    if isinstance(old, VectorCodebook):
        assert torch.equal(new.mask, old.mask)
        assert new.axis == old.axis and torch.equal(new.indices, old.indices)
        # padding past the matrix is never read; the rest of every codebook comes back exactly
        width = old.mask[0].numel() if old.axis == "rows" else old.mask.shape[0]
        flat = [c.transpose(1, 2).reshape(*c.shape[:1], c.shape[2], -1)[..., :width]
                for c in (old.codebooks, new.codebooks)]  # fmt: skip
        assert torch.equal(*flat)
    else:  # every zero is a pruned one: a file does not tell a ternary zero from it
        signs = old.signs * old.mask
        assert torch.equal(new.scales, old.scales) and torch.equal(new.signs, signs)
        assert torch.equal(new.mask, signs.ne(0).to(signs.dtype))
    x = torch.randn(8, IN)
    assert torch.equal(decoded(x), model(x))


def _weight_row(model):
    return next(r for r in summarize_model(model).tensors if r.name == "0.weight")


@pytest.mark.parametrize("axis", ["rows", "columns"])
def test_a_product_quantized_weight_costs_its_codebooks_and_codes(axis):
    k, segment = 16, 8
    model = share_pq(_fresh(), SharePqConfig(segment=segment, k=k, axis=axis), progress=False)
    n, length = (HIDDEN, IN) if axis == "rows" else (IN, HIDDEN)
    segments = math.ceil(length / segment)
    codebooks = 4 * k * length  # float32, padding left out
    codes = math.ceil(segments * n * math.ceil(math.log2(k)) / 8)
    row = _weight_row(model)
    assert row.encoding == f"vector k={k} t=1 d={segment}"
    assert row.nbytes <= codebooks + codes
    assert row.nbytes < 4 * IN * HIDDEN / 6  # 131,072 bytes dense
    assert len(packed_bytes(model)) < 4 * (IN * HIDDEN + HIDDEN * OUT) / 5


def test_residual_stages_cost_one_codebook_and_one_code_a_stage():
    stages, k, segment = 3, 8, 4
    model = share_rq(_fresh(), ShareRqConfig(stages=stages, k=k, segment=segment), progress=False)
    row = _weight_row(model)
    bound = stages * (4 * k * IN + math.ceil(IN // segment * HIDDEN * math.log2(k) / 8))
    assert row.encoding == f"vector k={k} t={stages} d={segment}"
    assert row.nbytes <= bound < 4 * IN * HIDDEN / 3


def test_a_binarized_weight_costs_a_scale_a_row_and_a_bit_a_weight():
    model = share_binary(_fresh(), ShareBinaryConfig(scale="channel"), progress=False)
    row = _weight_row(model)
    assert row.encoding == "sign"
    assert row.nbytes <= 4 * HIDDEN + IN * HIDDEN // 8  # 4,608 bytes; dense 131,072


def test_scalar_codebooks_and_their_files_do_not_change(tmp_path):
    # k-means sharing (and pruning) keep the encodings and format version 1 they had
    model = share_kmeans(_pruned(), ShareKmeansConfig(bits=4), progress=False)
    data = _pack(model, tmp_path).read_bytes()
    assert data[8] == 1
    assert {r["encoding"] for r in forge.split(data)[0]["tensors"]} <= {
        "sparse",
        "codebook",
        "dense",
    }
    assert _pack(METHODS["pq"](), tmp_path, "pq.nsk").read_bytes()[8] == 2 == VERSION


def _vector_file(tmp_path) -> bytes:
    return _pack(METHODS["rq pruned"](), tmp_path).read_bytes()


def _record(header, encoding) -> dict:
    return next(r for r in header["tensors"] if r["encoding"] == encoding)


VECTOR_DAMAGE = {
    "k too large": lambda r: r["params"].update(k=1 << 20),
    "k zero": lambda r: r["params"].update(k=0),
    "k smaller than the table": lambda r: r["params"].update(k=4),
    "stages past the limit": lambda r: r["params"].update(stages=17),
    "no stages": lambda r: r["params"].update(stages=0),
    "segment zero": lambda r: r["params"].update(segment=0),
    "segment past the row": lambda r: r["params"].update(segment=10**9),
    "axis": lambda r: r["params"].update(axis=2),
    "unknown parameter": lambda r: r["params"].update(extra=1),
    "index bits": lambda r: r["params"].update(index_bits=0),
    "codes count": lambda r: r["sections"]["codes"].update(
        count=r["sections"]["codes"]["count"] - 1
    ),
    "codebook count": lambda r: r["sections"]["codebooks"].update(count=1 << 40),
    "codebook dtype": lambda r: r["sections"]["codebooks"].update(dtype="int32"),
    "no codes": lambda r: r["sections"].pop("codes"),
}


@pytest.mark.parametrize("damage", sorted(VECTOR_DAMAGE))
def test_a_damaged_vector_header_is_refused(damage, tmp_path):
    header, payload = forge.split(_vector_file(tmp_path))
    VECTOR_DAMAGE[damage](_record(header, "vector"))
    path = tmp_path / "damaged.nsk"
    path.write_bytes(forge.assemble(header, payload))
    with pytest.raises(CorruptFileError):  # LimitError is one
        unpack(path, model=_fresh())


SIGN_DAMAGE = {
    "scales count": lambda r: r["sections"]["scales"].update(
        count=r["sections"]["scales"]["count"] + 1
    ),
    "signs count": lambda r: r["sections"]["signs"].update(count=1 << 40),
    "a parameter": lambda r: r["params"].update(k=2),
    "scales as integers": lambda r: r["sections"]["scales"].update(dtype="int32"),
}


@pytest.mark.parametrize("damage", sorted(SIGN_DAMAGE))
def test_a_damaged_sign_header_is_refused(damage, tmp_path):
    header, payload = forge.split(_pack(METHODS["ternary pruned"](), tmp_path).read_bytes())
    SIGN_DAMAGE[damage](_record(header, "sign"))
    path = tmp_path / "damaged.nsk"
    path.write_bytes(forge.assemble(header, payload))
    with pytest.raises(CorruptFileError):
        unpack(path, model=_fresh())


def test_a_vector_tensor_in_a_version_1_file_or_a_later_version_is_refused(tmp_path):
    data = bytearray(_vector_file(tmp_path))
    for version, words in ((1, "newer than the file's format version"), (3, "upgrade netshrink")):
        data[8] = version
        path = tmp_path / "v.nsk"
        path.write_bytes(forge._recrc(bytes(data)))
        with pytest.raises(CorruptFileError, match=words):
            unpack(path, model=_fresh())


def test_a_code_past_the_codebook_is_refused(tmp_path):
    model = share_pq(_fresh(), SharePqConfig(segment=8, k=5), progress=False)  # 3-bit codes
    header, payload = forge.split(
        pack(model, tmp_path / "m.nsk", PackConfig(coders=())).read_bytes()
    )
    codes = _record(header, "vector")["sections"]["codes"]
    assert codes["kind"] == "bits"
    start = codes["offset"]
    payload = payload[:start] + b"\xff" * codes["length"] + payload[start + codes["length"] :]
    path = tmp_path / "damaged.nsk"
    path.write_bytes(forge.assemble(header, payload))
    with pytest.raises(CorruptFileError, match="past its"):
        unpack(path, model=_fresh())


def test_decoding_a_vector_tensor_stays_within_its_counted_working_bytes():
    torch.manual_seed(0)
    stages, segments, k, segment, n = 2, 100, 16, 5, 1024  # rows of 500 = 100 segments of 5
    books = torch.randn(stages, segments, k, segment)
    indices = torch.randint(k, (stages, segments, n))
    mask = torch.ones(n, segments * segment)
    weight = VectorCodebook(books, indices, mask, "rows")(None)
    parts = VectorParts(books.numpy(), indices.numpy(), mask.numpy(), "rows")
    dtype, tag, encoded = encode_tensor(weight, PackConfig(coders=()), parts)
    assert tag == "vector"
    sections = {role: section for role, (section, _) in encoded.sections.items()}
    record = TensorRecord(name="t", shape=tuple(weight.shape), dtype=dtype, encoding=tag,
                          params=encoded.params, sections=sections)  # fmt: skip
    data = {role: raw for role, (_, raw) in encoded.sections.items()}
    tracemalloc.start()
    out = decode_tensor(record, data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert torch.equal(out, weight)
    assert peak - out.numel() * out.element_size() <= working_bytes(record)


def test_a_weight_that_is_not_its_codebooks_is_stored_by_its_values():
    # a pruning mask stacked on a PQ weight changes its values: the codebooks alone would not
    # give them back, so the encoder keeps another encoding (the values are what is stored)
    model = METHODS["pq"]()
    layer = model[0]
    parts = VectorParts(
        layer.parametrizations.weight[0].codebooks.detach().numpy(),
        layer.parametrizations.weight[0].indices.numpy(),
        layer.parametrizations.weight[0].mask.numpy(),
        "rows",
    )
    other = layer.weight.detach().clone()
    other[0, 0] += 1.0
    assert encode_tensor(other, PackConfig(), parts)[1] != "vector"
    assert encode_tensor(layer.weight.detach(), PackConfig(), parts)[1] == "vector"

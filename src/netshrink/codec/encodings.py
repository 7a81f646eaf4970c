"""Tensor encodings, chosen per tensor from its values alone, so that they fit whatever the
compression methods produce (a pruning mask, a weight-sharing codebook, or both):

- `dense`: every value, at the tensor's dtype (or float16 on request);
- `sparse`: the non-zeros' positions as relative indices (Han et al. 2016), their values either
  raw or, when at most 256 distinct non-zeros remain (weight sharing, fixed point), as a
  codebook: centroids plus an index stream (Kim et al.'s "synapse code" holds the same parts);
- `codebook`: few distinct values and few zeros: centroids plus one index per element;
- `fixed`: values on a power-of-two grid, q * 2**-frac with integers q spanning at most 16 bits
  (a fixed-point weight): the integers as a stream, no table. A sparse tensor's kept values can
  take the same form.

A pruned weight is an exact zero (a pruning mask's output is one), so masks need no section of
their own. Every applicable encoding is tried and the smallest kept. `ENCODINGS` is the registry:
a plain dict from the header's tag to the encode and decode functions. netshrink.codec.shared
adds `sign` (binarization, read off the values too) and `vector` (product / residual
quantization, Gong et al. 2014), whose codebooks come from the layer's parametrization.
"""

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field, field_validator

from ..config import Config
from ..errors import CorruptFileError
from . import relative
from .header import DTYPES, FLOAT_DTYPES, BytesSection, EncodingTag, TensorRecord
from .sections import (
    Encoded,
    Sections,
    bytes_section,
    get_section,
    index_stream,
    read_bytes,
    stream_section,
)
from .shared import VectorParts, decode_sign, decode_vector, encode_sign, encode_vector, vector_work
from .streams import CODERS, StreamSection, decode_stream

MAX_CENTROIDS = 256
MAX_FIXED_BITS = 16  # the `fixed` encoding holds integers of magnitude at most 2**15
# The decoders' working arrays, counted before anything is decoded (docs/format.md, "Checks and
# limits"); measured peaks with a margin (tests/codec/test_forged_files.py holds them to it).
WORK_PER_ELEMENT = 24  # the flat output and its int64 / float64 intermediates
WORK_PER_SYMBOL = 48  # an int64 stream, Huffman's block matrix, relative-index running sums
WORK_PER_BYTE = 8  # a section's bytes copied, padded and widened to 64-bit windows
WORK_TABLES = 4 << 20  # a Huffman decode table, an ANS model (alphabets of at most 2**16)


class PackConfig(Config):
    """How `pack` stores values.

    `index_bits`: relative-index bits, "paper" (8 for conv weights, 5 for the rest: Deep
    Compression), "best" (the b that codes smallest) or a number 1..16. `float16`: store raw
    float32 values at half precision (lossy). `coders` / `encodings`: restrict the choice
    (benchmarks; raw bit-packing and dense always stay available).
    """

    index_bits: Literal["paper", "best"] | int = Field("paper", union_mode="left_to_right")
    float16: bool = False
    coders: tuple[Literal["bits", "huffman", "ans"], ...] = CODERS
    encodings: tuple[EncodingTag, ...] = ("dense", "sparse", "codebook", "fixed", "sign", "vector")

    @field_validator("index_bits")
    @classmethod
    def _check_bits(cls, bits: str | int) -> str | int:
        if isinstance(bits, int) and not 1 <= bits <= relative.MAX_BITS:
            raise ValueError(f"index_bits must be 'paper', 'best' or 1..{relative.MAX_BITS}")
        return bits


class Encoding(NamedTuple):
    encode: Callable[..., Encoded | None]  # (values, shape, dtype, config); `vector`: + parts
    decode: Callable[[TensorRecord, dict[str, bytes]], np.ndarray]


def _store_dtype(dtype: str, config: PackConfig) -> str:
    return "float16" if config.float16 and dtype == "float32" else dtype


def encode_dense(values, shape, dtype, config) -> Encoded:
    """Every value, little-endian at the tensor's dtype (float16 if `config.float16`)."""
    return Encoded({}, {"values": bytes_section(values, _store_dtype(dtype, config))})


def decode_dense(record: TensorRecord, data: dict[str, bytes]) -> np.ndarray:
    """The flat values of a dense record."""
    values = get_section(record, "values", BytesSection)
    if values.count != record.numel:
        raise CorruptFileError(f"{record.name}: {values.count} values for {record.numel} elements")
    if values.dtype != record.dtype and not (
        values.dtype in FLOAT_DTYPES and record.dtype in FLOAT_DTYPES
    ):
        raise CorruptFileError(f"{record.name}: values stored as {values.dtype}")
    return read_bytes(values, data["values"])


def codebook(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(centroids sorted by value, index of each value) when `values` holds at most 256
    distinct finite values (compared bit for bit), else None."""
    if values.size == 0 or not np.isfinite(values).all():
        return None
    bits = values.view(f"u{values.itemsize}")
    if np.unique(bits[:4096]).size > MAX_CENTROIDS:  # a cheap refusal for dense float weights
        return None
    unique, index = np.unique(bits, return_inverse=True)
    if unique.size > MAX_CENTROIDS:
        return None
    centroids = unique.view(values.dtype)
    order = np.argsort(centroids, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return centroids[order], rank[index.ravel()]


def _codebook_sections(values: np.ndarray, dtype: str, config: PackConfig) -> Sections | None:
    found = codebook(values)
    if found is None:
        return None
    centroids, index = found
    return {"centroids": bytes_section(centroids, dtype), "codes": stream_section(index, config)}


def encode_codebook(values, shape, dtype, config) -> Encoded | None:
    """Centroids plus one code per element, when at most 256 distinct values (else None)."""
    if dtype not in FLOAT_DTYPES:
        return None
    sections = _codebook_sections(values, dtype, config)
    return None if sections is None else Encoded({}, sections)


def decode_codebook(record: TensorRecord, data: dict[str, bytes]) -> np.ndarray:
    """The flat values of a codebook record: `centroids[codes]`."""
    return _decode_codes(record, data, record.numel)


def _decode_codes(record: TensorRecord, data: dict[str, bytes], count: int) -> np.ndarray:
    centroids = get_section(record, "centroids", BytesSection)
    codes = get_section(record, "codes", StreamSection)
    if codes.count != count or centroids.count > MAX_CENTROIDS or (count and not centroids.count):
        raise CorruptFileError(f"{record.name}: codebook sizes do not match the tensor")
    if centroids.dtype not in FLOAT_DTYPES:
        raise CorruptFileError(f"{record.name}: centroids stored as {centroids.dtype}")
    index = decode_stream(codes, data["codes"])
    if index.size and index.max() >= centroids.count:
        raise CorruptFileError(f"{record.name}: codebook index past its {centroids.count} entries")
    return read_bytes(centroids, data["centroids"])[index]


def fixed_grid(values: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(frac, integers q) with values == q * 2**-frac, |q| <= 2**15, for the smallest such
    frac in -64..64; None when the values are not on such a grid."""
    if values.size == 0 or not np.isfinite(values).all():
        return None
    wide = values.astype(np.float64)
    top = float(np.abs(wide).max())
    if top == 0:
        return None
    frac = MAX_FIXED_BITS - 1 - math.ceil(math.log2(top))
    if not -64 <= frac <= 64 or not _integral(np.ldexp(wide, frac)):
        return None  # beyond the frac a header may hold (docs/format.md): another encoding
    while frac > -64 and _integral(np.ldexp(wide, frac - 1)):
        frac -= 1
    return frac, np.ldexp(wide, frac).astype(np.int64)


def _integral(scaled: np.ndarray) -> bool:
    return bool(np.all(scaled == np.round(scaled)))


def _fixed_sections(values: np.ndarray, config: PackConfig):
    if "fixed" not in config.encodings:
        return None
    found = fixed_grid(values)
    if found is None:
        return None
    frac, q = found
    offset = int(q.min())
    return {"frac": frac, "offset": offset}, {"codes": stream_section(q - offset, config)}


def encode_fixed(values, shape, dtype, config) -> Encoded | None:
    """The integers of a tensor on a power-of-two grid, as one stream (else None)."""
    if dtype not in FLOAT_DTYPES:
        return None
    found = _fixed_sections(values, config)
    return None if found is None else Encoded(*found)


def decode_fixed(record: TensorRecord, data: dict[str, bytes]) -> np.ndarray:
    """The flat values of a fixed record: (codes + offset) * 2**-frac."""
    return _decode_fixed(record, data, record.numel)


def _decode_fixed(record: TensorRecord, data: dict[str, bytes], count: int) -> np.ndarray:
    frac, offset = record.params.get("frac"), record.params.get("offset")
    if frac is None or offset is None or abs(frac) > 64 or abs(offset) >= 2**32:
        raise CorruptFileError(f"{record.name}: fixed point needs frac and offset parameters")
    codes = get_section(record, "codes", StreamSection)
    if codes.count != count:
        raise CorruptFileError(f"{record.name}: {codes.count} codes for {count} values")
    q = decode_stream(codes, data["codes"])
    if q.size and q.max() > 1 << MAX_FIXED_BITS:  # q - min(q) spans at most 2**16 when packed
        raise CorruptFileError(f"{record.name}: fixed-point codes wider than {MAX_FIXED_BITS} bits")
    q += offset  # in place: working arrays stay at two per value (docs/format.md's budget)
    values = q.astype(np.float64)
    del q
    return np.ldexp(values, -frac, out=values)


def encode_sparse(values, shape, dtype, config) -> Encoded | None:
    """Relative indices of the non-zeros (Han et al. 2016) and their values, raw, as a codebook
    or as fixed-point integers, whichever is smallest; None for a tensor without zeros."""
    if dtype not in FLOAT_DTYPES:
        return None
    nonzero = values != 0  # NaN is kept; -0.0 is a pruned weight
    if nonzero.all():
        return None
    positions = np.flatnonzero(nonzero)
    bits, index = index_stream(config, shape, positions)
    kept = values[positions]
    raw = bytes_section(kept, _store_dtype(dtype, config))
    options = [Encoded({"index_bits": bits}, {"index": index, "values": raw})]
    shared = _codebook_sections(kept, dtype, config)
    if shared is not None:
        options.append(Encoded({"index_bits": bits}, {"index": index, **shared}))
    fixed = _fixed_sections(kept, config)
    if fixed is not None:
        options.append(Encoded({"index_bits": bits, **fixed[0]}, {"index": index, **fixed[1]}))
    return min(options, key=lambda encoded: encoded.cost)  # ties: the earlier, simpler one


def decode_sparse(record: TensorRecord, data: dict[str, bytes]) -> np.ndarray:
    """The flat values of a sparse record: zeros, with the stored values at the decoded
    positions."""
    bits = record.params.get("index_bits", 0)
    extra = set(record.params) - {"index_bits"}
    if extra not in (set(), {"frac", "offset"}) or not 1 <= bits <= relative.MAX_BITS:
        raise CorruptFileError(f"{record.name}: sparse encoding needs index_bits in 1..16")
    index = get_section(record, "index", StreamSection)
    positions = relative.decode_positions(decode_stream(index, data["index"]), bits, record.numel)
    if "values" in record.sections:
        values = get_section(record, "values", BytesSection)
        if values.count != positions.size:
            raise CorruptFileError(f"{record.name}: {values.count} values, {positions.size} slots")
        kept = read_bytes(values, data["values"])
    elif "centroids" in record.sections:
        kept = _decode_codes(record, data, positions.size)
    else:
        kept = _decode_fixed(record, data, positions.size)
    out = np.zeros(record.numel, dtype=kept.dtype)
    out[positions] = kept
    return out


ENCODINGS: dict[EncodingTag, Encoding] = {
    "dense": Encoding(encode_dense, decode_dense),
    "sparse": Encoding(encode_sparse, decode_sparse),
    "codebook": Encoding(encode_codebook, decode_codebook),
    "fixed": Encoding(encode_fixed, decode_fixed),
    "sign": Encoding(encode_sign, decode_sign),
    "vector": Encoding(encode_vector, decode_vector),
}
ROLES: dict[EncodingTag, tuple[frozenset[str], ...]] = {
    "dense": (frozenset({"values"}),),
    "sparse": (
        frozenset({"index", "values"}),
        frozenset({"index", "centroids", "codes"}),
        frozenset({"index", "codes"}),
    ),
    "codebook": (frozenset({"centroids", "codes"}),),
    "fixed": (frozenset({"codes"}),),
    "sign": (frozenset({"scales", "signs"}),),
    "vector": (frozenset({"codebooks", "codes"}), frozenset({"index", "codebooks", "codes"})),
}


def encode_tensor(
    tensor: torch.Tensor, config: PackConfig, parts: VectorParts | None = None
) -> tuple[str, str, Encoded]:
    """(dtype name, encoding tag, encoded parts) of the smallest encoding of `tensor`; `parts`:
    the codebooks of the VectorCodebook that computes it, for the `vector` encoding."""
    dtype = dtype_name(tensor.dtype)
    values = _numpy(tensor)
    best = None
    for tag in ("dense", *(t for t in config.encodings if t != "dense")):
        given = {"parts": parts} if tag == "vector" else {}
        encoded = ENCODINGS[tag].encode(values, tuple(tensor.shape), dtype, config, **given)
        if encoded is not None and (best is None or encoded.cost < best[1].cost):
            best = (tag, encoded)
    return dtype, best[0], best[1]


def working_bytes(record: TensorRecord) -> int:
    """An upper bound on the bytes that decoding `record` allocates besides its output."""
    symbols = sum(s.count for s in record.sections.values() if not isinstance(s, BytesSection))
    raw = sum(s.length for s in record.sections.values())
    extra = vector_work(record) if record.encoding == "vector" else 0
    return (
        (WORK_PER_ELEMENT * record.numel + WORK_PER_SYMBOL * symbols + WORK_PER_BYTE * raw)
        + WORK_TABLES
        + extra
    )


def decode_tensor(record: TensorRecord, data: dict[str, bytes]) -> torch.Tensor:
    """The tensor a record describes, from its sections' bytes (CRCs already checked)."""
    if frozenset(record.sections) not in ROLES[record.encoding]:
        raise CorruptFileError(f"{record.name}: wrong sections for a {record.encoding} tensor")
    if record.encoding != "dense" and record.dtype not in FLOAT_DTYPES:
        raise CorruptFileError(f"{record.name}: {record.encoding} needs a float tensor")
    flat = ENCODINGS[record.encoding].decode(record, data)
    torch_dtype, np_dtype = DTYPES[record.dtype]
    flat = flat.astype(np_dtype, copy=False)
    if record.dtype == "bfloat16":
        return torch.from_numpy(flat).view(torch.bfloat16).reshape(record.shape)
    return torch.from_numpy(flat).to(torch_dtype).reshape(record.shape)


def dtype_name(dtype: torch.dtype) -> str:
    """The header's name for a torch dtype; ValueError for one the format cannot hold."""
    for name, (torch_dtype, _) in DTYPES.items():
        if torch_dtype == dtype:
            return name
    raise ValueError(f"tensors of dtype {dtype} cannot be packed")


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy()

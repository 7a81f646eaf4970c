"""The encodings of weight sharing beyond a scalar codebook (Gong et al. 2014, "Compressing Deep
Convolutional Networks using Vector Quantization"):

- `vector`: product quantization (one stage) and residual quantization (several): per stage and
  segment a codebook of k sub-vectors, and one index per sub-vector; the weight is the sum of
  the stages' chosen codewords, times the pruning mask. The codebooks cannot be read off the
  values, so the encoder takes them from the layer's VectorCodebook (`VectorParts`) and keeps
  the encoding only when decoding it gives the layer's weight exactly;
- `sign`: binarization with a scale a row (output channel): `scale[row] * s` with s in
  {+1, -1, 0}. This one is read off the values alone, so a checkpoint's plain weights pack as
  small as the SignCodebook that made them.

docs/format.md specifies both; `parts` rebuilds the parametrization's tensors from a record.
"""

import math
from typing import Literal, NamedTuple

import numpy as np

from ..errors import CorruptFileError
from . import relative
from .header import DTYPES, FLOAT_DTYPES, BytesSection, TensorRecord
from .sections import (
    Encoded,
    bytes_section,
    get_section,
    index_stream,
    narrowest_float,
    read_floats,
    stream_section,
)
from .streams import MAX_ALPHABET, StreamSection, decode_stream

MAX_STAGES = 16  # decoding does one gather of the padded weight a stage: work stays linear
MAX_K = MAX_ALPHABET
AXES = ("rows", "columns")  # params["axis"] is the position in this tuple
SIGNS = (1.0, -1.0, 0.0)  # sign symbol -> factor of the row's scale


class VectorParts(NamedTuple):
    """A VectorCodebook's tensors as arrays: `codebooks` (stages, segments, k, segment),
    `indices` (stages, segments, vectors), `mask` (the weight's shape, 0 / 1) and `axis`."""

    codebooks: np.ndarray
    indices: np.ndarray
    mask: np.ndarray
    axis: Literal["rows", "columns"]


class SignParts(NamedTuple):
    """A SignCodebook's tensors as arrays: `scales` (rows,) and `signs` (the weight's shape)."""

    scales: np.ndarray
    signs: np.ndarray


def _vectors(shape: tuple[int, ...], axis: str) -> tuple[int, int]:
    """(vectors n, vector length L) of a weight viewed as a matrix (shape[0], the rest) whose
    sub-vectors run along `axis`."""
    rows = shape[0] if shape else 1
    cols = math.prod(shape[1:])
    return (rows, cols) if axis == "rows" else (cols, rows)


def encode_vector(values, shape, dtype, config, parts: VectorParts | None = None):
    """Codebooks (each stage's k codewords as rows of length L, the padding of the last segment
    left out) plus one code per sub-vector, plus the kept positions when the mask has zeros;
    None without `parts`, for a table the reader would refuse, or when it does not decode to
    `values` exactly."""
    if parts is None or dtype not in FLOAT_DTYPES or parts.codebooks.dtype != values.dtype:
        return None
    stages, segments, k, segment = parts.codebooks.shape
    n, length = _vectors(shape, parts.axis)
    if (
        not 1 <= stages <= MAX_STAGES
        or k > MAX_K
        or segment > length
        or segments != -(-length // segment)
        or parts.indices.shape != (stages, segments, n)
        or stages * k * length > values.size  # the reader's limit: a section's count <= numel
        or not np.isin(parts.mask, (0, 1)).all()
    ):
        return None
    table = parts.codebooks.transpose(0, 2, 1, 3).reshape(stages, k, -1)[:, :, :length]
    params = {"stages": stages, "k": k, "segment": segment, "axis": AXES.index(parts.axis)}
    sections = {
        "codebooks": bytes_section(table, narrowest_float(table, dtype)),
        "codes": stream_section(parts.indices.reshape(-1), config),
    }
    keep = parts.mask.reshape(-1) != 0
    if not keep.all():
        bits, sections["index"] = index_stream(config, shape, np.flatnonzero(keep))
        params["index_bits"] = bits
    encoded = Encoded(params, sections)
    return encoded if _decodes_to(encoded, "vector", values, shape, dtype) else None


def _decodes_to(encoded: Encoded, tag: str, values, shape, dtype) -> bool:
    record = TensorRecord(
        name="<packing>",
        shape=shape,
        dtype=dtype,
        encoding=tag,
        params=encoded.params,
        sections={role: section for role, (section, _) in encoded.sections.items()},
    )
    data = {role: raw for role, (_, raw) in encoded.sections.items()}
    return np.array_equal(DECODERS[tag](record, data), values)  # -0.0 is 0.0, as in `sparse`


def vector_parts(record: TensorRecord, data: dict[str, bytes]) -> VectorParts:
    """The codebooks, indices, mask and axis of a `vector` record, every size checked first."""
    p = record.params
    stages, k, segment, axis = (p.get(key, 0) for key in ("stages", "k", "segment", "axis"))
    if set(p) - {"stages", "k", "segment", "axis", "index_bits"} or not 0 <= axis < len(AXES):
        raise CorruptFileError(f"{record.name}: vector encoding parameters are wrong")
    n, length = _vectors(record.shape, AXES[axis])
    if not (
        record.numel
        and 1 <= stages <= MAX_STAGES
        and 1 <= k <= MAX_K
        and 1 <= segment <= max(length, 1)
    ):
        raise CorruptFileError(
            f"{record.name}: vector encoding needs 1..{MAX_STAGES} stages, k in 1..{MAX_K} and "
            f"a segment of 1..{length} entries"
        )
    segments = -(-length // segment)
    books = get_section(record, "codebooks", BytesSection)
    codes = get_section(record, "codes", StreamSection)
    if books.count != stages * k * length or codes.count != stages * segments * n:
        raise CorruptFileError(f"{record.name}: vector codebook sizes do not match the tensor")
    table = read_floats(record, "codebooks", data).reshape(stages, k, length)
    indices = decode_stream(codes, data["codes"])
    if indices.size and indices.max() >= k:
        raise CorruptFileError(f"{record.name}: vector code past its {k} codewords")
    padded = np.zeros((stages, k, segments * segment), dtype=table.dtype)
    padded[:, :, :length] = table
    codebooks = padded.reshape(stages, k, segments, segment).transpose(0, 2, 1, 3)
    return VectorParts(
        codebooks, indices.reshape(stages, segments, n), _mask(record, data), AXES[axis]
    )


def _mask(record: TensorRecord, data: dict[str, bytes]) -> np.ndarray:
    mask = np.ones(record.numel, dtype=DTYPES[record.dtype][1])
    if "index" not in record.sections:
        return mask
    bits = record.params.get("index_bits", 0)
    if not 1 <= bits <= relative.MAX_BITS:
        raise CorruptFileError(f"{record.name}: a vector mask needs index_bits in 1..16")
    index = get_section(record, "index", StreamSection)
    positions = relative.decode_positions(decode_stream(index, data["index"]), bits, record.numel)
    mask[:] = 0
    mask[positions] = 1
    return mask


def vector_work(record: TensorRecord) -> int:
    """Bytes that decoding a `vector` record allocates beyond what `working_bytes` counts for
    every encoding: the summed sub-vectors with their padding, and their reordered copy."""
    p = record.params
    n, length = _vectors(record.shape, AXES[p.get("axis", 0) % len(AXES)])
    segment = min(max(p.get("segment", 1), 1), max(length, 1))
    padded = -(-length // segment) * segment * n
    return 2 * 8 * padded


def decode_vector(record: TensorRecord, data: dict[str, bytes]) -> np.ndarray:
    """The flat values of a `vector` record: each stage's chosen codewords summed in stage
    order at the tensor's dtype (as VectorCodebook's forward adds them), padding cut, times
    the mask."""
    books, indices, mask, axis = vector_parts(record, data)
    segments = np.arange(books.shape[1])[:, None]
    total = books[0][segments, indices[0]]  # (segments, vectors, segment)
    for stage in range(1, books.shape[0]):
        total += books[stage][segments, indices[stage]]
    n, length = _vectors(record.shape, axis)
    matrix = total.transpose(1, 0, 2).reshape(n, -1)[:, :length]
    del total
    flat = (matrix if axis == "rows" else matrix.T).reshape(-1)
    return np.multiply(flat, mask, out=mask)


def encode_sign(values, shape, dtype, config) -> Encoded | None:
    """One scale a row (shape[0]) and a sign symbol an element (0: +scale, 1: -scale, 2: zero),
    when every row's non-zero values share one magnitude (binarization, Gong et al. 2014);
    else None."""
    if dtype not in FLOAT_DTYPES or len(shape) < 2 or values.size == 0:
        return None
    if not np.isfinite(values).all():
        return None
    rows = values.reshape(shape[0], -1)
    magnitude = np.abs(rows)
    scales = magnitude.max(axis=1)
    if not ((magnitude == scales[:, None]) | (rows == 0)).all():
        return None
    symbols = np.where(rows > 0, 0, np.where(rows < 0, 1, 2))
    return Encoded(
        {},
        {
            "scales": bytes_section(scales, narrowest_float(scales, dtype)),
            "signs": stream_section(symbols.reshape(-1), config),
        },
    )


def sign_parts(record: TensorRecord, data: dict[str, bytes]) -> SignParts:
    """The scales and signs (+1, -1, 0) of a `sign` record, every size checked first."""
    rows = record.shape[0] if record.shape else 0
    signs = get_section(record, "signs", StreamSection)
    scales = get_section(record, "scales", BytesSection)
    if (
        record.params
        or len(record.shape) < 2
        or scales.count != rows
        or signs.count != record.numel
    ):
        raise CorruptFileError(f"{record.name}: sign encoding sizes do not match the tensor")
    symbols = decode_stream(signs, data["signs"])
    if symbols.size and symbols.max() >= len(SIGNS):
        raise CorruptFileError(f"{record.name}: a sign symbol past 2")
    factors = np.asarray(SIGNS, dtype=DTYPES[record.dtype][1])[symbols]
    return SignParts(read_floats(record, "scales", data), factors)


def decode_sign(record: TensorRecord, data: dict[str, bytes]) -> np.ndarray:
    """The flat values of a `sign` record: each row's scale times its signs."""
    scales, signs = sign_parts(record, data)
    rows = signs.reshape(scales.size, -1)
    return np.multiply(rows, scales[:, None], out=rows).reshape(-1)


DECODERS = {"vector": decode_vector, "sign": decode_sign}

"""rANS through the `constriction` library: the coder that reaches the entropy.

constriction's `AnsCoder` (64-bit state, 32-bit words) codes with a categorical model at 24-bit
precision. The file stores a small frequency table `q` (one `table_width`-bit integer a symbol),
from which encoder and decoder derive the same exact 24-bit model by integer arithmetic
(`model_weights`), so a decoder written from docs/format.md alone agrees with constriction bit
for bit. The table width is chosen per stream to minimise table + payload.
"""

from dataclasses import dataclass

import constriction
import numpy as np

from ..errors import CorruptFileError
from .bitio import pack_fields, packed_size, unpack_fields

PRECISION = 24
MAX_TABLE_BITS = 20


@dataclass(frozen=True)
class AnsPlan:
    """The frequency table chosen for a stream and the bits it is expected to take."""

    table: np.ndarray  # q: one entry per symbol of the alphabet
    table_width: int
    estimated_bits: float


def model_weights(table: np.ndarray) -> np.ndarray:
    """The 24-bit model (weights >= 1 summing to 2**24) that table `q` stands for.

    f_i = floor(q_i * T / Q) with T = 2**24 - n and Q = sum(q); the T - sum(f) units left go one
    each to the symbols with the largest remainders (q_i * T mod Q), ties to the lower symbol;
    the weight of symbol i is f_i + 1, so every symbol of the alphabet stays codable.
    """
    q = np.asarray(table, dtype=np.int64)  # q_i < 2**20 and T < 2**24: products fit in int64
    free, total = (1 << PRECISION) - q.size, int(q.sum())
    f = q * free // total
    order = np.lexsort((np.arange(q.size), -(q * free % total)))
    f[order[: free - int(f.sum())]] += 1
    return f + 1


def _model(weights: np.ndarray):
    # constriction's fast quantiser gives symbol i the weight floor(C_i * scale) - floor(C_(i-1)
    # * scale) + 1 with scale = (2**24 - n) / sum(f); with sum(f) = 2**24 - n, scale is exactly
    # 1 and the weights are exactly f_i + 1 (all values stay below 2**24, exact in float).
    return constriction.stream.model.Categorical((weights - 1).astype(np.float64), perfect=False)


def plan(counts: np.ndarray) -> AnsPlan:
    """Try table widths 1..20 and keep the one with the fewest table + coded bits."""
    counts = np.asarray(counts, dtype=np.int64)
    best = None
    for width in range(1, min(MAX_TABLE_BITS, int(counts.max()).bit_length()) + 1):
        table = _scaled(counts, width)
        weights = model_weights(table)
        bits = float(-(counts * np.log2(weights / (1 << PRECISION))).sum())
        total = bits + counts.size * width
        if best is None or total < best.estimated_bits + best.table.size * best.table_width:
            best = AnsPlan(table=table, table_width=width, estimated_bits=bits)
    return best


def _scaled(counts: np.ndarray, width: int) -> np.ndarray:
    """Counts scaled so the largest is 2**width - 1; a used symbol keeps at least 1."""
    top = int(counts.max())
    scaled = (counts * ((1 << width) - 1) + top // 2) // top
    return np.where(counts > 0, np.maximum(scaled, 1), 0)


def encode(symbols: np.ndarray, p: AnsPlan) -> bytes:
    """The section bytes: the frequency table (MSB-first), then constriction's compressed
    32-bit words, little-endian."""
    table, _ = pack_fields(p.table, p.table_width)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _model(model_weights(p.table)))
    return table + coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, *, alphabet: int, count: int, table_width: int) -> np.ndarray:
    """Decode `count` symbols; a table that sums to zero, words that constriction refuses, or
    a coder that is not empty once all symbols are out raise CorruptFileError."""
    table_end = packed_size(alphabet * table_width)
    if len(data) < table_end or (len(data) - table_end) % 4:
        raise CorruptFileError("ANS section length does not fit its table and 32-bit words")
    table = unpack_fields(data[:table_end], table_width, alphabet)
    if not table.any():
        raise CorruptFileError("ANS frequency table is all zeros")
    words = np.frombuffer(data[table_end:], dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_model(model_weights(table)), count)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"ANS stream is corrupt ({exc})") from None
    if not coder.is_empty():
        raise CorruptFileError("ANS stream does not end where its symbols do")
    return symbols.astype(np.int64)

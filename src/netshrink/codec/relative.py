"""Relative indices: the positions of a sparse tensor's non-zeros as gaps (Han et al. 2016, Deep
Compression, section 2: "we store the index difference instead of the absolute position, and
encode this difference in 8 bits for conv layer and 5 bits for fc layer. When we need an index
difference larger than the bound, we ... add a filler zero").

With b bits, entry e < 2**b - 1 means "skip e zeros, then the next position holds a stored value";
the entry F = 2**b - 1 is the filler: F zeros and no stored value. A gap of g zeros therefore
costs g // F fillers plus one entry g % F. (Deep Compression stores the filler as a zero weight;
here its value is implied, so the value stream holds exactly the non-zeros.) Positions are in
row-major (C) order of the tensor; zeros after the last non-zero are implied by its size.
"""

import numpy as np

from ..errors import CorruptFileError

PAPER_BITS = {"conv": 8, "fc": 5}  # Deep Compression's choice per layer kind
MAX_BITS = 16


def paper_bits(shape: tuple[int, ...]) -> int:
    """Deep Compression's bits for a tensor: 8 for a convolution's (4-d) weight, 5 otherwise."""
    return PAPER_BITS["conv"] if len(shape) == 4 else PAPER_BITS["fc"]


def encode_positions(positions: np.ndarray, bits: int) -> np.ndarray:
    """The relative-index stream of strictly increasing `positions` with `bits`-bit entries."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"relative-index bits must be in 1..{MAX_BITS}, not {bits}")
    filler = (1 << bits) - 1
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    fillers, rest = np.divmod(gaps, filler)
    entry_at = np.cumsum(fillers + 1) - 1  # where each non-zero's own entry lands
    stream = np.full(int(entry_at[-1]) + 1 if entry_at.size else 0, filler, dtype=np.int64)
    stream[entry_at] = rest
    return stream


def decode_positions(stream: np.ndarray, bits: int, size: int) -> np.ndarray:
    """Positions of the non-zeros in a tensor of `size` elements; a stream that runs past the
    tensor's end raises CorruptFileError."""
    filler = (1 << bits) - 1
    stream = np.asarray(stream, dtype=np.int64)
    is_filler = stream == filler
    if stream.size and stream.max() > filler:
        raise CorruptFileError(f"relative index {int(stream.max())} does not fit in {bits} bits")
    advance = np.where(is_filler, filler, stream + 1)
    ends = np.cumsum(advance)
    if ends.size and ends[-1] > size:
        raise CorruptFileError(
            f"relative indices run to position {int(ends[-1]) - 1}, past the tensor's {size}"
        )
    return ends[~is_filler] - 1


def stream_length(positions: np.ndarray, bits: int) -> int:
    """Entries the stream of `positions` takes at `bits` bits (non-zeros plus fillers)."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    return int(positions.size + (gaps // ((1 << bits) - 1)).sum())


def likely_bits(positions: np.ndarray, keep: int = 3) -> list[int]:
    """The `keep` values of b in 1..16 whose streams have the smallest order-0 entropy plus about
    6 bits of coder table per symbol of their alphabet, best first: the candidates worth coding
    for real ("the best b found by trying"). Ties go to the smaller b."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    costs = []
    for bits in range(1, MAX_BITS + 1):
        filler = (1 << bits) - 1
        fillers, rest = np.divmod(gaps, filler)
        counts = np.bincount(rest, minlength=filler + 1)
        counts[filler] += int(fillers.sum())
        alphabet = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 1
        costs.append((_entropy(counts) + 6 * alphabet, bits))
    return [bits for _, bits in sorted(costs)[:keep]]


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / counts.sum())).sum()) if counts.size > 1 else 0.0

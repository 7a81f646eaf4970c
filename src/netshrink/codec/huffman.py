"""Canonical Huffman coding, vectorised: the index coder of Deep Compression (Han et al. 2016) and
of Kim et al.'s "synapse code".

Only the code lengths are stored; the codes follow from them canonically (as in DEFLATE, RFC 1951
3.2.2): shorter codes first, and within a length in symbol order. Lengths are limited to
`MAX_CODE_BITS`, so a decoder needs one table of 2**16 entries at most.

Decoding is table-driven with no Python loop per symbol: the symbols are cut into blocks of
`block` symbols whose bit lengths are stored, and all blocks are decoded side by side, one numpy
step per symbol position within a block (docs/format.md, "Huffman").
"""

import heapq
from dataclasses import dataclass

import numpy as np

from ..errors import CorruptFileError
from .bitio import pack_fields, packed_size, unpack_fields, windows64

MAX_CODE_BITS = 16


@dataclass(frozen=True)
class HuffmanPlan:
    """Everything the encoder decided, and the exact size it will take."""

    lengths: np.ndarray  # per symbol of the alphabet, 0 = unused
    block: int
    block_bits: np.ndarray  # bits of each block of `block` symbols
    length_width: int
    block_width: int

    @property
    def nbytes(self) -> int:
        table = packed_size(self.lengths.size * self.length_width)
        blocks = packed_size(self.block_bits.size * self.block_width)
        return table + blocks + packed_size(int(self.block_bits.sum()))


def code_lengths(counts: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Huffman code lengths for symbol `counts`, limited to `max_bits` (0 for unused symbols).

    Ties are broken by symbol order, so the lengths are deterministic. A single used symbol gets
    a 1-bit code.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
    if used.size <= 1:
        return lengths
    if used.size > 1 << max_bits:
        raise ValueError(f"{used.size} symbols do not fit {max_bits}-bit codes")
    depth = _tree_depths(counts[used])
    lengths[used] = _limit(depth, counts[used], max_bits)
    return lengths


def _tree_depths(counts: np.ndarray) -> np.ndarray:
    """Leaf depths of the Huffman tree; ties go to the lower node number (leaves in symbol
    order, then merged nodes in the order they were made)."""
    n = counts.size
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent = np.zeros(2 * n - 1, dtype=np.int64)
    node = n
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (c1 + c2, node))
        node += 1
    depth = [0] * (2 * n - 1)
    for child in range(2 * n - 3, -1, -1):  # a parent is always numbered after its children
        depth[child] = depth[parent[child]] + 1
    return np.array(depth[:n], dtype=np.int64)


def _limit(depth: np.ndarray, counts: np.ndarray, max_bits: int) -> np.ndarray:
    """Clamp lengths to `max_bits`, then lengthen the longest codes below it until the Kraft sum
    is one again (zlib's method); the most frequent symbols keep the shortest codes."""
    if depth.max() <= max_bits:
        return depth
    per_length = np.bincount(np.minimum(depth, max_bits), minlength=max_bits + 1)
    kraft = int(sum(int(n) << (max_bits - bits) for bits, n in enumerate(per_length) if bits))
    while kraft > 1 << max_bits:
        bits = max(b for b in range(1, max_bits) if per_length[b])
        per_length[bits] -= 1
        per_length[bits + 1] += 1
        kraft -= 1 << (max_bits - bits - 1)
    order = np.lexsort((np.arange(counts.size), -counts))
    limited = np.empty_like(depth)
    limited[order] = np.repeat(np.arange(max_bits + 1), per_length)
    return limited


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol (an integer of `lengths[s]` bits; 0 where unused).

    Sorted by (length, symbol), the codes left-aligned to the longest length are consecutive
    runs: each code's run starts where the previous one ends. So one cumulative sum makes them.
    """
    order, run = _canonical_order(lengths)
    codes = np.zeros(len(lengths), dtype=np.int64)
    if order.size:
        longest = int(lengths[order[-1]])
        codes[order] = (np.cumsum(run) - run) >> (longest - lengths[order])
    return codes


def _canonical_order(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Used symbols sorted by (length, symbol), and the table entries (2**(longest - length))
    that each covers."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    longest = int(lengths[order[-1]]) if order.size else 0
    return order, np.left_shift(1, longest - lengths[order])


def plan(symbols: np.ndarray, alphabet: int) -> HuffmanPlan:
    """Code lengths and block layout for `symbols` (all < `alphabet`), without coding them."""
    counts = np.bincount(symbols, minlength=alphabet)
    lengths = code_lengths(counts)
    block = _block_size(symbols.size)
    bits = lengths[symbols]
    padded = np.zeros(-(-symbols.size // block) * block, dtype=np.int64)
    padded[: symbols.size] = bits
    block_bits = padded.reshape(-1, block).sum(axis=1)
    return HuffmanPlan(
        lengths=lengths,
        block=block,
        block_bits=block_bits,
        length_width=int(lengths.max()).bit_length(),
        block_width=int(block_bits.max()).bit_length(),
    )


def _block_size(count: int) -> int:
    """Blocks decode side by side: more blocks mean fewer numpy steps but more stored lengths;
    about 4 sqrt(count) symbols a block, 256..2048, keeps both small."""
    return int(min(2048, max(256, 1 << int(np.ceil(np.log2(4 * np.sqrt(max(count, 1))))))))


def encode(symbols: np.ndarray, p: HuffmanPlan) -> bytes:
    """The section bytes: code-length table, block-length table, then the codes, MSB-first."""
    table, _ = pack_fields(p.lengths, p.length_width)
    blocks, _ = pack_fields(p.block_bits, p.block_width)
    codes = canonical_codes(p.lengths)
    stream, _ = pack_fields(codes[symbols], p.lengths[symbols])
    return table + blocks + stream


def decode(
    data: bytes, *, alphabet: int, count: int, length_width: int, block: int, block_width: int
) -> np.ndarray:
    """Decode `count` symbols from a section written by `encode`; any inconsistency (a length
    table that is not a prefix code, a block that does not end where its length says, a bit
    pattern that is no code) raises CorruptFileError."""
    n_blocks = -(-count // block)
    table_end = packed_size(alphabet * length_width)
    blocks_end = table_end + packed_size(n_blocks * block_width)
    if len(data) < blocks_end:
        raise CorruptFileError("Huffman section is shorter than its tables")
    lengths = _read_lengths(data[:table_end], alphabet, length_width)
    block_bits = unpack_fields(data[table_end:blocks_end], block_width, n_blocks)
    stream = data[blocks_end:]
    if packed_size(int(block_bits.sum())) != len(stream):
        raise CorruptFileError("Huffman stream length does not match its block lengths")
    return _decode_blocks(stream, lengths, block_bits, count, block)


def _read_lengths(data: bytes, alphabet: int, width: int) -> np.ndarray:
    lengths = unpack_fields(data, width, alphabet)
    if lengths.max(initial=0) > MAX_CODE_BITS or not lengths.any():
        raise CorruptFileError("Huffman code lengths are out of range")
    used = lengths[lengths > 0]
    if int(np.sum(np.left_shift(1, MAX_CODE_BITS - used))) > 1 << MAX_CODE_BITS:
        raise CorruptFileError("Huffman code lengths do not form a prefix code")
    return lengths


def _decode_table(lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Entry w (an L-bit window, L = longest code) = symbol + (code length << 17) of the code
    that begins w; windows that begin no code hold the symbol `alphabet` (invalid), length 1."""
    order, run = _canonical_order(lengths)
    longest = int(lengths[order[-1]])
    entry = order + (lengths[order] << 17)
    table = np.full(1 << longest, lengths.size + (1 << 17), dtype=np.int64)
    table[: int(run.sum())] = np.repeat(entry, run)
    return table, longest


def _decode_blocks(stream: bytes, lengths, block_bits, count: int, block: int) -> np.ndarray:
    table, longest = _decode_table(lengths)
    starts = np.concatenate([[0], np.cumsum(block_bits)[:-1]]).astype(np.int64)
    # a corrupt stream can run one block past its end: pad with zeros so reads stay in range
    windows = windows64(stream, extra_words=(block * longest) // 32 + 2)
    pos, mask, base = starts.copy(), (1 << longest) - 1, 64 - longest
    out = np.empty((block, starts.size), dtype=np.int64)
    last = count - (starts.size - 1) * block  # symbols in the last block
    last_end = -1
    for step in range(block):  # one numpy step per position in a block, all blocks at once
        entry = table[(windows[pos >> 5] >> (base - (pos & 31))) & mask]
        out[step] = entry
        pos += entry >> 17
        if step == last - 1:
            last_end = int(pos[-1])
    ends = starts + block_bits
    if not np.array_equal(pos[:-1], ends[:-1]) or last_end != ends[-1]:
        raise CorruptFileError("Huffman stream does not end where its block lengths say")
    symbols = (out.T.reshape(-1)[:count]) & ((1 << 17) - 1)
    if symbols.max(initial=0) >= lengths.size:
        raise CorruptFileError("Huffman stream holds a bit pattern that is no code")
    return symbols

"""Bit packing, vectorised with numpy: fields of up to 32 bits written MSB-first.

Every bit stream in a .nsk file has one layout (docs/format.md, "Bit order"): fields are written
one after another, each most significant bit first; the stream fills bytes from their most
significant bit; the last byte is padded with zero bits. No Python loop runs per field: the
fields are placed into 32-bit words with one `bincount` (their bits never overlap, so a sum is
an OR), and read back through a table of 64-bit windows.
"""

import numpy as np

MAX_FIELD_BITS = 32
CHUNK_FIELDS = 1 << 16  # fields read at once by unpack_fields


def packed_size(total_bits: int) -> int:
    """Bytes that `total_bits` bits occupy once padded to a whole byte."""
    return (total_bits + 7) // 8


def pack_fields(values: np.ndarray, widths: np.ndarray | int) -> tuple[bytes, int]:
    """Concatenate `values[i]` written in `widths[i]` bits (0..32) each, MSB-first.

    Returns the bytes and the number of bits used. Values must fit their widths.
    """
    values = np.asarray(values, dtype=np.uint64)
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), values.shape)
    # zero-width fields hold nothing; dropped, they can neither shift by 64 nor sit past the end
    values, widths = values[widths > 0], widths[widths > 0]
    ends = np.cumsum(widths)
    total = int(ends[-1]) if ends.size else 0
    if total == 0:
        return b"", 0
    starts = ends - widths
    # left-align each field in the 64-bit window that begins at its first 32-bit word
    window = values << (64 - widths - (starts & 31)).astype(np.uint64)
    word = starts >> 5
    # fields are in order and never overlap: OR together those that begin in the same word
    first = np.flatnonzero(np.diff(word, prepend=-1))
    merged = np.bitwise_or.reduceat(window, first)
    out = np.zeros((total + 31) // 32 + 1, dtype=np.uint64)
    out[word[first]] |= merged >> np.uint64(32)
    out[word[first] + 1] |= merged & np.uint64(0xFFFFFFFF)
    return out.astype(">u4").tobytes()[: packed_size(total)], total


def windows64(data: bytes | np.ndarray, extra_words: int = 2) -> np.ndarray:
    """`w[k]` = the 64 bits that start at bit 32k of `data` (big-endian), as int64.

    The stream is padded with `extra_words` zero words, so that a read a little past its end
    (a corrupt length) sees zeros instead of failing.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    padded = np.zeros(((raw.size + 3) // 4 + extra_words + 1) * 4, dtype=np.uint8)
    padded[: raw.size] = raw
    words = padded.view(">u4").astype(np.uint64)
    return ((words[:-1] << np.uint64(32)) | words[1:]).view(np.int64)


def read_fields(windows: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """The `width`-bit fields (width <= 32) that begin at bit positions `starts`."""
    if width == 0:
        return np.zeros(starts.shape, dtype=np.int64)
    shift = 64 - width - (starts & 31)
    # arithmetic shift of the int64 view: the sign bits land above the mask
    return (windows[starts >> 5] >> shift) & ((1 << width) - 1)


def unpack_fields(data: bytes, width: int, count: int, start_bit: int = 0) -> np.ndarray:
    """`count` fields of `width` bits each, from bit `start_bit` of `data` (int64 array)."""
    out = np.zeros(count, dtype=np.int64)
    if count == 0 or width == 0:
        return out
    windows = windows64(data)
    # chunk by chunk, so the working arrays stay small next to the output, whatever `count` is
    for first in range(0, count, CHUNK_FIELDS):
        starts = np.arange(first, min(first + CHUNK_FIELDS, count), dtype=np.int64)
        out[first : first + starts.size] = read_fields(windows, start_bit + starts * width, width)
    return out

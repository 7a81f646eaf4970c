"""Bit packing: MSB-first fields of 0..32 bits, exact for any widths."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.codec.bitio import pack_fields, read_fields, unpack_fields, windows64


def test_fields_are_written_msb_first():
    data, bits = pack_fields(np.array([1, 2, 7]), 3)  # 001 010 111 -> 00101011 1(0000000)
    assert bits == 9 and data == bytes([0b00101011, 0b10000000])


def test_32_bit_fields_and_zero_widths():
    values = np.array([0xFFFFFFFF, 0, 5, 0x80000001])
    widths = np.array([32, 0, 3, 32])
    data, bits = pack_fields(values, widths)
    assert bits == 67 and len(data) == 9
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    got = [
        int(read_fields(windows64(data), starts[i : i + 1], int(w))[0])
        for i, w in enumerate(widths)
    ]
    assert got == [0xFFFFFFFF, 0, 5, 0x80000001]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 32), st.lists(st.integers(0, 2**32 - 1), max_size=300), st.integers(0, 13))
def test_fixed_width_round_trip(width, raw, start):
    values = np.array([v % (1 << width) if width else 0 for v in raw], dtype=np.uint64)
    prefix, _ = pack_fields(np.zeros(start, dtype=np.uint64), 1)
    data, bits = pack_fields(
        np.concatenate([np.zeros(start), values]), [1] * start + [width] * len(values)
    )
    assert bits == start + width * len(values)
    assert np.array_equal(unpack_fields(data, width, len(values), start), values.astype(np.int64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 32), st.integers(0, 2**32 - 1)), max_size=300))
def test_variable_width_round_trip(fields):
    widths = np.array([w for w, _ in fields], dtype=np.int64)
    values = np.array([v % (1 << w) for w, v in fields], dtype=np.uint64)
    data, bits = pack_fields(values, widths)
    assert bits == int(widths.sum()) and len(data) == (bits + 7) // 8
    starts = np.cumsum(widths) - widths
    windows = windows64(data)
    for width in set(widths.tolist()):
        chosen = widths == width
        assert np.array_equal(
            read_fields(windows, starts[chosen], width), values[chosen].astype(np.int64)
        )

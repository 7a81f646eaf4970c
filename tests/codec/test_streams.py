"""Integer streams: the smallest coder is chosen, every coder round-trips, choices are
deterministic, and the order-0 entropy is computed exactly."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.codec.streams import decode_stream, encode_stream, entropy_bits


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 2**32 - 1), max_size=50) | st.lists(st.integers(0, 40), max_size=3000),
    st.sampled_from([("bits",), ("bits", "huffman"), ("bits", "ans"), ("bits", "huffman", "ans")]),
)
def test_every_coder_round_trips(values, coders):
    symbols = np.array(values, dtype=np.int64)
    section, data = encode_stream(symbols, coders)
    assert section.kind in coders and section.count == symbols.size
    assert np.array_equal(decode_stream(section, data), symbols)


@pytest.mark.parametrize(
    "symbols, kind",
    [
        ([], "bits"),
        ([0] * 1000, "bits"),  # zero-width fields: zero bytes
        ([5] * 100_000, "ans"),  # one symbol: ANS takes almost nothing
        (list(range(256)) * 40, "bits"),  # uniform over 8 bits: raw packing is optimal
    ],
)
def test_the_smallest_coder_wins(symbols, kind):
    section, data = encode_stream(np.array(symbols, dtype=np.int64))
    assert section.kind == kind
    assert np.array_equal(decode_stream(section, data), symbols)


def test_skewed_streams_use_an_entropy_coder_and_are_deterministic():
    rng = np.random.default_rng(0)
    symbols = rng.geometric(0.3, 20_000) - 1
    section, data = encode_stream(symbols)
    assert section.kind in ("huffman", "ans")
    assert 8 * len(data) < 1.02 * entropy_bits(symbols)
    assert encode_stream(symbols) == (section, data)


def test_entropy_bits():
    assert entropy_bits(np.array([0, 1, 2, 3])) == pytest.approx(8.0)
    assert entropy_bits(np.array([7] * 10)) == 0.0
    assert entropy_bits(np.array([], dtype=np.int64)) == 0.0

"""Relative indices (Deep Compression): gaps in b bits with filler entries, exact for any
positions and bit width."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.codec import relative
from netshrink.errors import CorruptFileError


def test_filler_entries_cover_long_gaps():
    # 3 bits: filler F = 7 stands for 7 zeros; positions 1, 4, 15 have gaps 1, 2, 10 = 7 + 3
    stream = relative.encode_positions(np.array([1, 4, 15]), 3)
    assert stream.tolist() == [1, 2, 7, 3]
    assert relative.decode_positions(stream, 3, 16).tolist() == [1, 4, 15]
    assert relative.stream_length(np.array([1, 4, 15]), 3) == 4


def test_paper_bits_per_layer_kind():
    assert relative.paper_bits((20, 1, 5, 5)) == 8
    assert relative.paper_bits((300, 784)) == 5
    assert relative.paper_bits((10,)) == 5


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 16), st.integers(0, 5000), st.floats(0, 1), st.integers(0, 2**31))
def test_round_trip(bits, size, density, seed):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(size) < density)
    stream = relative.encode_positions(positions, bits)
    assert stream.size == relative.stream_length(positions, bits)
    assert stream.max(initial=0) < 2**bits
    assert np.array_equal(relative.decode_positions(stream, bits, size), positions)


def test_likely_bits_are_distinct_candidates_in_range():
    rng = np.random.default_rng(0)
    positions = np.flatnonzero(rng.random(100_000) < 0.03)
    candidates = relative.likely_bits(positions)
    assert len(set(candidates)) == 3 and all(1 <= b <= 16 for b in candidates)
    assert relative.likely_bits(np.zeros(0, dtype=np.int64)) == [1, 2, 3]


def test_a_stream_past_the_tensor_end_is_corrupt():
    with pytest.raises(CorruptFileError, match="past"):
        relative.decode_positions(np.array([3, 7, 7, 7]), 3, 20)
    with pytest.raises(CorruptFileError, match="does not fit"):
        relative.decode_positions(np.array([9]), 3, 20)

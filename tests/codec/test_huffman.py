"""Canonical Huffman: optimal lengths within the 16-bit limit, the RFC 1951 canonical codes, and an
exact, vectorised round trip; damaged sections raise CorruptFileError."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.codec import huffman
from netshrink.codec.bitio import pack_fields
from netshrink.errors import CorruptFileError


def _round_trip(symbols: np.ndarray, alphabet: int) -> bytes:
    plan = huffman.plan(symbols, alphabet)
    data = huffman.encode(symbols, plan)
    assert len(data) == plan.nbytes
    decoded = huffman.decode(
        data,
        alphabet=alphabet,
        count=symbols.size,
        length_width=plan.length_width,
        block=plan.block,
        block_width=plan.block_width,
    )
    assert np.array_equal(decoded, symbols)
    return data


def test_canonical_codes_match_rfc1951_example():
    # RFC 1951 3.2.2: lengths (3, 3, 3, 3, 3, 2, 4, 4) give these codes
    codes = huffman.canonical_codes(np.array([3, 3, 3, 3, 3, 2, 4, 4]))
    assert codes.tolist() == [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]


def test_lengths_are_optimal_and_deterministic():
    assert huffman.code_lengths(np.array([1, 1, 2, 4])).tolist() == [3, 3, 2, 1]
    assert huffman.code_lengths(np.array([5, 0, 5])).tolist() == [1, 0, 1]
    assert huffman.code_lengths(np.array([0, 9, 0])).tolist() == [0, 1, 0]


def test_lengths_are_limited_to_16_bits_and_stay_a_prefix_code():
    counts = np.array([2**i for i in range(40)], dtype=np.int64)  # unlimited depth would be 39
    lengths = huffman.code_lengths(counts)
    assert lengths.max() == 16
    assert np.sum(2.0**-lengths) <= 1
    assert lengths[-1] == lengths.min()  # the most frequent symbol keeps the shortest code
    _round_trip(np.repeat(np.arange(40), np.minimum(counts, 300)), 40)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 6000),
    st.floats(0.05, 3.0),
    st.integers(0, 2**31),
)
def test_random_streams_round_trip(alphabet, count, concentration, seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(alphabet, concentration))
    _round_trip(rng.choice(alphabet, size=count, p=p), alphabet)


@pytest.mark.parametrize("symbols", [[0], [0] * 5000, [3] * 777, [1, 0] * 1000])
def test_degenerate_streams(symbols):
    symbols = np.array(symbols)
    _round_trip(symbols, int(symbols.max()) + 1)


def test_within_five_percent_of_entropy_on_a_skewed_stream():
    rng = np.random.default_rng(0)
    p = np.array([0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01])
    symbols = rng.choice(10, size=200_000, p=p)
    counts = np.bincount(symbols)
    entropy = -(counts * np.log2(counts / counts.sum())).sum()
    assert 8 * len(_round_trip(symbols, 10)) < 1.05 * entropy


def _sections(symbols, alphabet):
    plan = huffman.plan(symbols, alphabet)
    return plan, huffman.encode(symbols, plan)


def test_damage_is_detected():
    symbols = np.random.default_rng(1).integers(0, 20, 3000)
    plan, data = _sections(symbols, 20)
    args = dict(
        alphabet=20,
        count=3000,
        length_width=plan.length_width,
        block=plan.block,
        block_width=plan.block_width,
    )
    bad_table, _ = pack_fields(np.ones(20, dtype=np.uint64), plan.length_width)  # Kraft sum 10
    with pytest.raises(CorruptFileError, match="prefix code"):
        huffman.decode(bad_table + data[len(bad_table) :], **args)
    with pytest.raises(CorruptFileError):
        huffman.decode(data[:-1], **args)
    with pytest.raises(CorruptFileError):
        huffman.decode(data, **{**args, "count": 2999})
    with pytest.raises(CorruptFileError):
        huffman.decode(data[:5], **args)

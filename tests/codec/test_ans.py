"""rANS through constriction: exact round trips near the entropy, the 24-bit model derived from the
stored table exactly as docs/format.md says (checked by a decoder written from the document), and
damaged streams raising CorruptFileError."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.codec import ans
from netshrink.codec.bitio import packed_size, unpack_fields
from netshrink.errors import CorruptFileError


def _encode(symbols: np.ndarray, alphabet: int):
    plan = ans.plan(np.bincount(symbols, minlength=alphabet))
    return plan, ans.encode(symbols, plan)


def _reference_decode(data: bytes, alphabet: int, count: int, table_width: int) -> list[int]:
    """docs/format.md, "ANS", step by step in plain Python integers."""
    table_end = packed_size(alphabet * table_width)
    q = [int(v) for v in unpack_fields(data[:table_end], table_width, alphabet)]
    free, total = 2**24 - alphabet, sum(q)
    f = [v * free // total for v in q]
    for i in sorted(range(alphabet), key=lambda i: (-(q[i] * free % total), i))[: free - sum(f)]:
        f[i] += 1
    weights = [v + 1 for v in f]
    cdf = [sum(weights[:i]) for i in range(alphabet + 1)]
    words = [int.from_bytes(data[i : i + 4], "little") for i in range(table_end, len(data), 4)]
    state = 0
    if words:
        state = words.pop()
        while words and state < 2**32:
            state = (state << 32) | words.pop()
    out = []
    for _ in range(count):
        quantile = state % 2**24
        symbol = max(s for s in range(alphabet) if cdf[s] <= quantile)
        state = (state >> 24) * weights[symbol] + quantile - cdf[symbol]
        if state < 2**32 and words:
            state = (state << 32) | words.pop()
        out.append(symbol)
    assert state == 0  # an exactly consumed stream leaves the coder empty
    return out


def test_model_weights_are_exact_and_leaky():
    weights = ans.model_weights(np.array([3, 0, 1, 1000]))
    assert weights.sum() == 2**24 and weights.min() == 1 and weights[1] == 1


def test_a_decoder_written_from_the_format_document_agrees_with_constriction():
    rng = np.random.default_rng(3)
    symbols = rng.choice(6, size=400, p=[0.5, 0.2, 0.15, 0.1, 0.04, 0.01])
    plan, data = _encode(symbols, 6)
    assert _reference_decode(data, 6, 400, plan.table_width) == symbols.tolist()


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 300), st.integers(0, 6000), st.floats(0.05, 3.0), st.integers(0, 2**31))
def test_random_streams_round_trip(alphabet, count, concentration, seed):
    rng = np.random.default_rng(seed)
    symbols = rng.choice(alphabet, size=count, p=rng.dirichlet(np.full(alphabet, concentration)))
    if count == 0:
        symbols = np.zeros(0, dtype=np.int64)
        plan = ans.AnsPlan(np.ones(alphabet, dtype=np.int64), 1, 0.0)
        data = ans.encode(symbols, plan)
    else:
        plan, data = _encode(symbols, alphabet)
    decoded = ans.decode(data, alphabet=alphabet, count=count, table_width=plan.table_width)
    assert np.array_equal(decoded, symbols)


@pytest.mark.parametrize("symbols", [[0] * 5000, [1] * 3, [0, 1] * 2000])
def test_degenerate_streams(symbols):
    symbols = np.array(symbols)
    plan, data = _encode(symbols, 2)
    assert np.array_equal(
        ans.decode(data, alphabet=2, count=symbols.size, table_width=plan.table_width), symbols
    )


def test_within_one_percent_of_entropy_including_the_table():
    rng = np.random.default_rng(0)
    symbols = rng.choice(32, size=50_000, p=rng.dirichlet(np.ones(32)))
    counts = np.bincount(symbols, minlength=32)
    entropy = -(counts[counts > 0] * np.log2(counts[counts > 0] / counts.sum())).sum()
    _, data = _encode(symbols, 32)
    assert 8 * len(data) < 1.01 * entropy


def test_damage_is_detected():
    symbols = np.random.default_rng(2).integers(0, 9, 2000)
    plan, data = _encode(symbols, 9)
    args = dict(alphabet=9, count=2000, table_width=plan.table_width)
    with pytest.raises(CorruptFileError):
        ans.decode(data[:-4], **args)  # words missing: the coder is not left empty
    with pytest.raises(CorruptFileError):
        ans.decode(data[:-1], **args)  # not whole words
    with pytest.raises(CorruptFileError):
        ans.decode(data + b"\0\0\0\0", **args)  # constriction refuses a trailing zero word
    zero_table = bytes(packed_size(9 * plan.table_width))
    with pytest.raises(CorruptFileError, match="all zeros"):
        ans.decode(zero_table + data[len(zero_table) :], **args)

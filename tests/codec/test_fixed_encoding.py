"""The `fixed` encoding: values on a power-of-two grid stored as integers q with one fractional
length. fixed_grid finds the smallest frac and the exact integers, refuses values off any 16-bit
grid, and a dense or sparse tensor of fixed-point values round-trips bit for bit; damaged
parameters raise CorruptFileError."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.codec.encodings import (
    MAX_FIXED_BITS,
    PackConfig,
    decode_tensor,
    dtype_name,
    encode_fixed,
    encode_sparse,
    encode_tensor,
    fixed_grid,
)
from netshrink.codec.header import TensorRecord
from netshrink.errors import CorruptFileError


def _record(tensor: torch.Tensor, tag: str, encoded, **params) -> TensorRecord:
    return TensorRecord(
        name="t",
        shape=tuple(tensor.shape),
        dtype=dtype_name(tensor.dtype),
        encoding=tag,
        params={**encoded.params, **params},
        sections={
            role: s.model_copy(update={"length": len(b)})
            for role, (s, b) in encoded.sections.items()
        },
    )


def _decode(tensor: torch.Tensor, tag: str, encoded, **params) -> torch.Tensor:
    record = _record(tensor, tag, encoded, **params)
    return decode_tensor(record, {role: b for role, (_, b) in encoded.sections.items()})


def _twos(n: int) -> int:
    """How many times 2 divides n (n != 0)."""
    return (n & -n).bit_length() - 1


def _grid_tensor(shape, bits, frac, sparsity=0.0, seed=0, dtype=torch.float32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=shape)
    q = np.where(rng.random(shape) < sparsity, 0, q)
    return torch.from_numpy(np.ldexp(q.astype(np.float64), -frac)).to(dtype)


# ------------------------------------------------------------------------------------ fixed_grid


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-(2**15), 2**15), min_size=1, max_size=60).filter(any),
    st.integers(0, 12),
    st.integers(-40, 50),
    st.sampled_from([np.float64, np.float32]),
)
def test_fixed_grid_finds_the_smallest_frac_and_the_exact_integers(ints, extra, frac, dtype):
    # values = q * 2**extra * 2**-frac: the smallest frac is frac minus every power of two that
    # divides all the integers.
    q = np.array(ints, dtype=np.int64) << extra
    values = np.ldexp(q.astype(np.float64), -frac).astype(dtype)
    shared = min(_twos(int(n)) for n in q if n)
    smallest = max(frac - shared, -64)  # a header's frac stops at -64
    found = fixed_grid(values)
    assert found is not None
    assert found[0] == smallest
    assert found[1].dtype == np.int64
    assert np.array_equal(found[1], q >> (frac - smallest))
    assert np.array_equal(np.ldexp(found[1].astype(np.float64), -found[0]), values)


@pytest.mark.parametrize(
    "values, frac, ints",
    [
        ([0.5, -0.25, 0.75], 2, [2, -1, 3]),
        ([3.0, 6.0, -9.0], 0, [3, 6, -9]),
        ([4.0, 8.0, -12.0], -2, [1, 2, -3]),
        ([1.0, 2.0**-15], 15, [2**15, 1]),
        ([-1.0, 1.0 - 2.0**-15], 15, [-(2**15), 2**15 - 1]),  # every value of a 16-bit format
        ([0.0, 0.0, 0.125], 3, [0, 0, 1]),
        ([2.0**70, 3 * 2.0**70], -64, [64, 192]),  # frac stops at -64, the decoder's limit
    ],
)
def test_fixed_grid_examples(values, frac, ints):
    for dtype in (np.float32, np.float64):
        found = fixed_grid(np.array(values, dtype=dtype))
        assert found is not None and found[0] == frac
        assert found[1].tolist() == ints


@pytest.mark.parametrize(
    "values",
    [
        [1.0, 2.0**-16],  # 17 bits of span
        [2.0**15 + 1, 1.0],
        [0.1],
        [1 / 3, 2 / 3],
        [0.0, 0.0, 0.0],
        [],
        [1.0, math.nan],
        [0.5, math.inf],
        [-math.inf],
    ],
)
def test_fixed_grid_refuses_values_off_a_16_bit_grid(values):
    for dtype in (np.float32, np.float64):
        assert fixed_grid(np.array(values, dtype=dtype)) is None


@pytest.mark.parametrize("seed", range(5))
def test_fixed_grid_refuses_irrational_multiples_of_random_floats(seed):
    rng = np.random.default_rng(seed)
    for n in (1, 7, 1000):
        values = (rng.standard_normal(n) * 0.7071).astype(np.float32)
        assert fixed_grid(values) is None
        assert fixed_grid(values.astype(np.float64)) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=True), min_size=0, max_size=30))
def test_fixed_grid_is_exact_minimal_and_decodable_or_none(values):
    array = np.array(values, dtype=np.float32)
    found = fixed_grid(array)
    if found is None:
        return
    frac, q = found
    assert np.array_equal(np.ldexp(q.astype(np.float64), -frac), array.astype(np.float64))
    assert int(np.abs(q).max()) <= 2 ** (MAX_FIXED_BITS - 1)
    assert frac == -64 or any(int(n) % 2 for n in q)  # one coarser frac would not be exact
    # (that the decoder accepts every frac: test_tiny_grid_values_round_trip)


# ------------------------------------------------------------------------------ encode / decode


@pytest.mark.parametrize(
    "bits, frac, dtype",
    [
        (8, 7, torch.float32),
        (12, 3, torch.float32),
        (16, 20, torch.float32),
        (10, -5, torch.float32),
        (16, 40, torch.float64),
        (8, 7, torch.float16),
        (11, 2, torch.float16),
    ],
)
def test_dense_fixed_point_tensors_round_trip_bit_exactly(bits, frac, dtype):
    tensor = _grid_tensor((32, 3, 3, 3), bits, frac, dtype=dtype)
    _, tag, encoded = encode_tensor(tensor, PackConfig())
    assert tag == "fixed"
    assert set(encoded.params) == {"frac", "offset"} and set(encoded.sections) == {"codes"}
    found = fixed_grid(tensor.reshape(-1).numpy())
    assert encoded.params == {"frac": found[0], "offset": int(found[1].min())}
    decoded = _decode(tensor, tag, encoded)
    assert decoded.dtype == tensor.dtype and torch.equal(decoded, tensor)
    # no table and no raw values: at most `bits` bits a value plus the header's share
    assert encoded.cost <= tensor.numel() * bits / 8 + 64


@pytest.mark.parametrize("bits, frac", [(8, 6), (12, 10), (5, -2)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_sparse_tensors_with_fixed_point_values_round_trip_bit_exactly(bits, frac, sparsity):
    tensor = _grid_tensor((64, 300), bits, frac, sparsity, seed=bits)
    values = tensor.reshape(-1).numpy()
    encoded, tag = encode_sparse(values, tuple(tensor.shape), "float32", PackConfig()), "sparse"
    if bits == 12:  # > 256 distinct values: no codebook, so the integers are the smallest
        assert set(encoded.sections) == {"index", "codes"}
    if "centroids" not in encoded.sections and "values" not in encoded.sections:
        assert set(encoded.params) == {"index_bits", "frac", "offset"}
    assert torch.equal(_decode(tensor, tag, encoded), tensor)
    _, tag, encoded = encode_tensor(tensor, PackConfig())  # whatever wins also round-trips
    assert torch.equal(_decode(tensor, tag, encoded), tensor)


def test_sparse_fixed_beats_raw_values():
    tensor = _grid_tensor((64, 300), 12, 10, 0.9, seed=3)
    _, tag, encoded = encode_tensor(tensor, PackConfig(encodings=("sparse", "fixed")))
    kept = int(tensor.count_nonzero())
    assert set(encoded.sections) == {"index", "codes"}
    assert len(encoded.sections["codes"][1]) <= kept * 12 / 8 + 8  # 12-bit integers, not floats


def test_fixed_is_only_tried_when_configured_and_only_for_float_tensors():
    tensor = _grid_tensor((40, 40), 12, 4)
    assert encode_tensor(tensor, PackConfig(encodings=("dense", "codebook")))[1] == "dense"
    assert encode_fixed(tensor.reshape(-1).numpy(), (40, 40), "float32", PackConfig()) is not None
    config = PackConfig(encodings=("dense",))
    assert encode_fixed(tensor.reshape(-1).numpy(), (40, 40), "float32", config) is None
    ints = tensor.mul(16).to(torch.int32)
    assert encode_tensor(ints, PackConfig())[1] == "dense"
    assert encode_fixed(ints.reshape(-1).numpy(), (40, 40), "int32", PackConfig()) is None


@pytest.mark.parametrize("exponent, sparsity", [(-70, 0.0), (-149, 0.0), (-100, 0.9)])
def test_tiny_grid_values_round_trip(exponent, sparsity):
    # 2**-70 is an exact float32 on the grid 2**-70: fixed_grid returns frac 70, past the
    # decoder's |frac| <= 64, so what pack writes must still be what unpack reads.
    tensor = _grid_tensor((20, 20), 4, 0, sparsity, seed=1) * 2.0**exponent
    assert tensor.abs().max() > 0
    _, tag, encoded = encode_tensor(tensor, PackConfig())
    assert torch.equal(_decode(tensor, tag, encoded), tensor)


# -------------------------------------------------------------------------------- damaged files


def _fixed_encoded(sparsity=0.0):
    tensor = _grid_tensor((16, 16), 10, 6, sparsity, seed=5)
    config = PackConfig(encodings=("sparse", "fixed")) if sparsity else PackConfig()
    _, tag, encoded = encode_tensor(tensor, config)
    return tensor, tag, encoded


@pytest.mark.parametrize("sparsity", [0.0, 0.8])
@pytest.mark.parametrize(
    "damage",
    [
        {"drop": "offset"},
        {"drop": "frac"},
        {"frac": 100},
        {"frac": -65},
        {"offset": 2**32},
        {"offset": -(2**40)},
    ],
    ids=["no-offset", "no-frac", "frac-100", "frac--65", "offset-2**32", "offset--2**40"],
)
def test_damaged_fixed_parameters_raise_corrupt_file_error(sparsity, damage):
    tensor, tag, encoded = _fixed_encoded(sparsity)
    assert tag == ("sparse" if sparsity else "fixed") and "codes" in encoded.sections
    params = dict(encoded.params)
    if "drop" in damage:
        del params[damage["drop"]]
    else:
        params.update(damage)
    record = _record(tensor, tag, encoded).model_copy(update={"params": params})
    with pytest.raises(CorruptFileError):
        decode_tensor(record, {role: b for role, (_, b) in encoded.sections.items()})


def test_a_codes_count_that_does_not_match_the_tensor_is_corrupt():
    tensor, tag, encoded = _fixed_encoded()
    record = _record(tensor, tag, encoded)
    codes = record.sections["codes"].model_copy(update={"count": tensor.numel() - 1})
    record = record.model_copy(update={"sections": {"codes": codes}})
    with pytest.raises(CorruptFileError):
        decode_tensor(record, {role: b for role, (_, b) in encoded.sections.items()})


def test_fixed_needs_a_float_tensor_and_its_codes_section():
    tensor, tag, encoded = _fixed_encoded()
    data = {role: b for role, (_, b) in encoded.sections.items()}
    as_int = _record(tensor, tag, encoded).model_copy(update={"dtype": "int32"})
    with pytest.raises(CorruptFileError):
        decode_tensor(as_int, data)
    no_codes = _record(tensor, tag, encoded).model_copy(update={"sections": {}})
    with pytest.raises(CorruptFileError):
        decode_tensor(no_codes, {})

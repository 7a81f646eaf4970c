"""Tensor encodings: every one round-trips exactly over random shapes, sparsities, value counts
and dtypes, and the smallest applicable one is chosen."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.codec.encodings import (
    ENCODINGS,
    PackConfig,
    decode_tensor,
    dtype_name,
    encode_tensor,
)
from netshrink.codec.header import TensorRecord


def _decode(tensor: torch.Tensor, tag: str, encoded) -> torch.Tensor:
    record = TensorRecord(
        name="t",
        shape=tuple(tensor.shape),
        dtype=dtype_name(tensor.dtype),
        encoding=tag,
        params=encoded.params,
        sections={
            role: s.model_copy(update={"length": len(b)})
            for role, (s, b) in encoded.sections.items()
        },
    )
    return decode_tensor(record, {role: b for role, (_, b) in encoded.sections.items()})


def _tensor(shape, sparsity, distinct, dtype, seed) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    values = rng.standard_normal(distinct) if distinct else rng.standard_normal(n)
    flat = values[rng.integers(0, len(values), n)] if distinct else values
    flat = np.where(rng.random(n) < sparsity, 0.0, flat)
    return torch.from_numpy(flat.reshape(shape)).to(dtype)


shapes = st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple)


@settings(max_examples=120, deadline=None)
@given(
    shapes,
    st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]),
    st.sampled_from([0, 1, 7, 256]),
    st.sampled_from([torch.float32, torch.float16, torch.float64]),
    st.integers(0, 2**31),
    st.sampled_from(["paper", "best", 1, 3, 16]),
)
def test_every_applicable_encoding_round_trips_exactly(
    shape, sparsity, distinct, dtype, seed, bits
):
    tensor = _tensor(shape, sparsity, distinct, dtype, seed)
    config = PackConfig(index_bits=bits)
    values = tensor.reshape(-1).numpy()
    for tag, encoding in ENCODINGS.items():
        encoded = encoding.encode(values, tuple(shape), dtype_name(dtype), config)
        if encoded is not None:
            decoded = _decode(tensor, tag, encoded)
            assert decoded.dtype == tensor.dtype and decoded.shape == tensor.shape
            assert torch.equal(decoded, tensor), tag


@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.bfloat16, torch.int8]
)
def test_other_dtypes_are_stored_dense_and_exact(dtype):
    tensor = (torch.arange(24).reshape(2, 3, 4) % 3).to(dtype)
    _, tag, encoded = encode_tensor(tensor, PackConfig())
    assert tag == "dense"
    assert torch.equal(_decode(tensor, tag, encoded), tensor)


def _costs(tensor: torch.Tensor) -> dict[str, int]:
    values = tensor.reshape(-1).numpy()
    encoded = {
        t: e.encode(values, tuple(tensor.shape), "float32", PackConfig())
        for t, e in ENCODINGS.items()
    }
    return {t: e.cost for t, e in encoded.items() if e is not None}


def test_the_smallest_encoding_is_chosen():
    cases = {
        "dense": _tensor((64, 64), 0.0, 0, torch.float32, 0),
        "sparse": _tensor((64, 64), 0.9, 0, torch.float32, 0),
        "codebook": _tensor((64, 64), 0.0, 4, torch.float32, 0),
        "shared": _tensor((64, 64), 0.97, 16, torch.float32, 0),
    }
    for expected, tensor in cases.items():
        _, tag, encoded = encode_tensor(tensor, PackConfig())
        costs = _costs(tensor)
        assert encoded.cost == min(costs.values()) == costs[tag]
        if expected != "shared":
            assert tag == expected
    # pruned and shared: relative indices plus a 16-entry codebook beat raw values
    shared = encode_tensor(cases["shared"], PackConfig(encodings=("sparse",)))[2]
    assert "centroids" in shared.sections and shared.sections["centroids"][0].count == 16
    # 4 centroids and 2-bit indices: about 2 bits a weight instead of 32
    assert _costs(cases["codebook"])["codebook"] < 64 * 64 * 2.2 / 8 + 100


def test_special_values_survive():
    tensor = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -1.5, 0.0, 0.0, 2.0])
    for encodings in [("dense",), ("dense", "sparse")]:
        _, tag, encoded = encode_tensor(tensor, PackConfig(encodings=encodings))
        decoded = _decode(tensor, tag, encoded)
        assert torch.equal(decoded.isnan(), tensor.isnan())
        finite = ~tensor.isnan()
        assert torch.equal(decoded[finite], tensor[finite])


def test_float16_storage_is_on_request_and_close():
    tensor = _tensor((50, 40), 0.5, 0, torch.float32, 1)
    _, tag, encoded = encode_tensor(tensor, PackConfig(float16=True))
    decoded = _decode(tensor, tag, encoded)
    assert decoded.dtype == torch.float32
    assert torch.allclose(decoded, tensor, rtol=1e-3, atol=1e-4) and not torch.equal(
        decoded, tensor
    )
    assert encoded.cost < encode_tensor(tensor, PackConfig())[2].cost


def test_best_index_bits_never_code_larger_than_the_paper():
    tensor = _tensor((300, 784), 0.92, 32, torch.float32, 2)
    paper = encode_tensor(tensor, PackConfig())[2]
    best = encode_tensor(tensor, PackConfig(index_bits="best"))[2]
    assert paper.params == {"index_bits": 5}
    assert len(best.sections["index"][1]) <= len(paper.sections["index"][1])


def test_config_is_validated():
    with pytest.raises(ValueError):
        PackConfig(index_bits=17)
    with pytest.raises(ValueError):
        PackConfig(coders=("lzma",))

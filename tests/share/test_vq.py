"""Product and residual quantization (Gong et al. 2014) as plain functions: exact when there are
as many centres as distinct sub-vectors, along rows and columns, with padding."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.errors import ConfigError
from netshrink.share.vq import (
    decode,
    kmeans_vectors,
    product_quantize,
    residual_quantize,
    segments,
)


def _matrix_of_repeats(rows: int, segment: int, parts: int, distinct: int, seed: int):
    """A rows x (parts * segment) matrix whose sub-vectors in each segment take `distinct`
    values (each used at least once)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(parts, distinct, segment, generator=gen)
    pick = torch.randint(distinct, (parts, rows), generator=gen)
    pick[:, :distinct] = torch.arange(distinct)
    return table[torch.arange(parts)[:, None], pick].transpose(0, 1).reshape(rows, -1)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(4, 12), st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(0, 99)
)
def test_pq_is_exact_when_k_equals_the_distinct_sub_vectors(rows, segment, parts, distinct, seed):
    w = _matrix_of_repeats(rows, segment, parts, distinct, seed)
    codes = product_quantize(w, segment=segment, k=distinct, seed=seed)
    assert codes.codebooks.shape == (1, parts, distinct, segment)
    assert torch.equal(decode(codes, tuple(w.shape)), w)
    # the same matrix transposed, quantized along columns
    codes_t = product_quantize(w.T.contiguous(), segment=segment, k=distinct, axis="columns")
    assert torch.equal(decode(codes_t, tuple(w.T.shape)), w.T)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 6), st.integers(1, 3), st.integers(1, 3), st.integers(0, 99))
def test_rq_is_exact_with_enough_centres_and_its_error_falls_with_stages(
    distinct, stages, segment, seed
):
    w = _matrix_of_repeats(10, segment, 3, distinct, seed)
    exact = residual_quantize(w, segment=segment, k=distinct, stages=stages)
    assert torch.equal(decode(exact, tuple(w.shape)), w)
    noisy = torch.randn(16, 12, generator=torch.Generator().manual_seed(seed))
    errors = [
        (decode(residual_quantize(noisy, segment=4, k=2, stages=t), (16, 12)) - noisy).norm()
        for t in (1, 2, 3)
    ]
    assert errors[0] > errors[1] > errors[2]


def test_rq_on_whole_rows_as_in_the_paper():
    w = torch.randn(20, 7, generator=torch.Generator().manual_seed(0))
    codes = residual_quantize(w, segment=7, k=20, stages=1)
    assert codes.codebooks.shape == (1, 1, 20, 7)
    assert torch.equal(decode(codes, (20, 7)), w)  # k = rows: every row is its own centre


def test_segments_pad_the_last_one_with_zeros():
    w = torch.arange(10.0).reshape(2, 5)
    parts = segments(w, 2, "rows")
    assert parts.shape == (3, 2, 2)
    assert parts[2].tolist() == [[4.0, 0.0], [9.0, 0.0]]
    assert segments(w, 2, "columns").shape == (1, 5, 2)  # 5 columns of 2
    codes = product_quantize(w, segment=2, k=2)
    assert torch.equal(decode(codes, (2, 5)), w)


def test_kmeans_vectors_is_deterministic_and_keeps_empty_clusters():
    points = torch.randn(3, 50, 2, generator=torch.Generator().manual_seed(1))
    a = kmeans_vectors(points, 8, seed=4)
    b = kmeans_vectors(points.clone(), 8, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    same = torch.ones(1, 5, 2)
    centroids, labels = kmeans_vectors(same, 3)
    assert torch.equal(centroids[0, labels[0]], same[0])


def test_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="segment"):
        product_quantize(torch.ones(2, 2), segment=0, k=2)
    with pytest.raises(ConfigError, match="stage"):
        residual_quantize(torch.ones(2, 2), segment=1, k=2, stages=0)
    with pytest.raises(ConfigError, match="cluster"):
        product_quantize(torch.ones(2, 2), segment=1, k=0)

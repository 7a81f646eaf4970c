"""Vector quantization of weight matrices as plain tensor functions: batched k-means on
sub-vectors, product quantization and residual quantization (Gong et al. 2014, "Compressing Deep
Convolutional Networks using Vector Quantization").

A matrix W (m x n) is cut along its rows into sub-vectors of `segment` consecutive entries: the
columns fall into n / segment segments, and segment j holds the m sub-vectors W[:, j*s:(j+1)*s].
Product quantization runs k-means in each segment on its own; residual quantization repeats
that on what the previous stages left. Quantizing "along columns" is the same on W transposed.
Arithmetic is float64 so that a centroid of identical sub-vectors is exactly that sub-vector.

Example:
    >>> w = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    >>> codes = product_quantize(w, segment=2, k=2)
    >>> torch.equal(decode(codes, w.shape), w)
    True
"""

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError
from .gather import gather_rows

Axis = Literal["rows", "columns"]
_CHUNK = 1 << 22  # distance-matrix elements per batch of segments: bounds the memory (32 MiB)


@dataclass(frozen=True)
class VectorCodes:
    """`codebooks` (stages, segments, k, segment) and `indices` (stages, segments, vectors) of a
    matrix quantized along `axis`; a product quantizer has one stage."""

    codebooks: torch.Tensor
    indices: torch.Tensor
    axis: Axis


def kmeans_vectors(
    points: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means in each group of `points` (groups, n, d): (centroids (groups, k, d), labels).

    k-means++ seeding (deterministic under `seed`), then Lloyd until no label changes or
    `max_iter`; an empty cluster keeps its centroid. When a group has at most k distinct points
    each becomes a centroid, so the group is reproduced exactly.
    """
    if k < 1:
        raise ConfigError(f"k-means needs at least 1 cluster, got {k}")
    x = points.detach().to(torch.float64)
    groups, n, _ = x.shape
    per_chunk = max(1, _CHUNK // max(1, n * k))
    gen = torch.Generator().manual_seed(seed)
    results = [
        _kmeans_chunk(x[i : i + per_chunk], k, gen, max_iter) for i in range(0, groups, per_chunk)
    ]
    return torch.cat([c for c, _ in results]), torch.cat([lab for _, lab in results])


def _kmeans_chunk(x, k, gen, max_iter):
    centroids = _kmeans_pp(x, k, gen)
    labels = None
    for _ in range(max_iter):
        new = _nearest(x, centroids)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        index = labels.unsqueeze(-1).expand_as(x)
        sums = torch.zeros_like(centroids).scatter_add_(1, index, x)
        counts = torch.zeros(centroids.shape[:2], dtype=x.dtype).scatter_add_(
            1, labels, torch.ones_like(labels, dtype=x.dtype)
        )
        means = sums / counts.clamp(min=1).unsqueeze(-1)
        centroids = torch.where(counts.unsqueeze(-1) > 0, means, centroids)
    return centroids, _nearest(x, centroids)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding, batched over groups (Arthur & Vassilvitskii 2007)."""
    groups, n, _ = x.shape
    rows = torch.arange(groups)
    chosen = [x[rows, torch.randint(n, (groups,), generator=gen)]]
    best = (x - chosen[0].unsqueeze(1)).pow(2).sum(-1)
    for _ in range(1, k):
        # a group whose points all sit on centroids already repeats one (an unused centroid)
        weights = torch.where(best.sum(1, keepdim=True) > 0, best, torch.ones_like(best))
        pick = torch.multinomial(weights, 1, generator=gen).squeeze(1)
        chosen.append(x[rows, pick])
        best = torch.minimum(best, (x - chosen[-1].unsqueeze(1)).pow(2).sum(-1))
    return torch.stack(chosen, 1)


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    d2 = (
        x.pow(2).sum(-1, keepdim=True)
        - 2 * x @ centroids.transpose(1, 2)
        + centroids.pow(2).sum(-1).unsqueeze(1)
    )
    return d2.argmin(-1)


def segments(matrix: torch.Tensor, segment: int, axis: Axis) -> torch.Tensor:
    """The sub-vectors of `matrix` as (segments, vectors, segment), zero-padded at the end."""
    if segment < 1:
        raise ConfigError(f"segment size must be at least 1, got {segment}")
    m = matrix if axis == "rows" else matrix.T
    rows, cols = m.shape
    pad = -cols % segment
    if pad:
        m = torch.cat([m, m.new_zeros(rows, pad)], 1)
    return m.reshape(rows, -1, segment).transpose(0, 1)


def product_quantize(
    matrix: torch.Tensor, *, segment: int, k: int, axis: Axis = "rows", seed: int = 0
) -> VectorCodes:
    """Product quantization of a matrix (Gong et al. 2014, section 3.3): k-means with `k` centres
    in each segment of `segment` columns (`axis="rows"`) or rows (`axis="columns"`)."""
    return residual_quantize(matrix, segment=segment, k=k, stages=1, axis=axis, seed=seed)


def residual_quantize(
    matrix: torch.Tensor, *, segment: int, k: int, stages: int, axis: Axis = "rows", seed: int = 0
) -> VectorCodes:
    """Residual quantization (Gong et al. 2014, section 3.4): `stages` rounds of product
    quantization, each on the residual the earlier rounds left. `segment` = the row length
    quantizes whole rows, as in the paper."""
    if stages < 1:
        raise ConfigError(f"residual quantization needs at least 1 stage, got {stages}")
    residual = segments(matrix.detach().to(torch.float64), segment, axis)
    codebooks, indices = [], []
    for stage in range(stages):
        centroids, labels = kmeans_vectors(residual, k, seed=seed + stage)
        residual = residual - _gather(centroids, labels)
        codebooks.append(centroids)
        indices.append(labels)
    return VectorCodes(torch.stack(codebooks).to(matrix.dtype), torch.stack(indices), axis)


def _gather(codebooks: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(segments, k, d), (segments, n) -> the chosen sub-vectors (segments, n, d)."""
    segments, k, d = codebooks.shape
    offsets = torch.arange(segments, device=indices.device).unsqueeze(1) * k
    return gather_rows(codebooks.reshape(segments * k, d), indices + offsets)


def decode(codes: VectorCodes, shape: tuple[int, int]) -> torch.Tensor:
    """The matrix of `shape` that `codes` stand for: the sum of its stages, padding cut off."""
    return decode_tensors(codes.codebooks, codes.indices, codes.axis, shape)


def decode_tensors(
    codebooks: torch.Tensor, indices: torch.Tensor, axis: Axis, shape: tuple[int, int]
) -> torch.Tensor:
    """`decode` on bare tensors (differentiable in `codebooks`), for the parametrization."""
    parts = sum(_gather(c, i) for c, i in zip(codebooks, indices))
    rows = parts.shape[1]
    matrix = parts.transpose(0, 1).reshape(rows, -1)
    if axis == "rows":
        return matrix[:, : shape[1]]
    return matrix[:, : shape[0]].T

"""Scalar k-means as plain functions: the clustering behind Deep Compression's weight sharing
(vector k-means for product and residual quantization is in `vq.py`). Modules only call these.

The scalar case (Han et al. 2016, "trained quantization"; Kim et al., "synapse grouping";
Al-Hami et al.) is exact and fast because in one dimension the cells of a Voronoi partition are
intervals: with the data sorted once, an assignment is `k - 1` binary searches for the midpoints
between neighbouring centroids, and the cluster means come from prefix sums. A Lloyd iteration
then costs O(k log n) instead of O(n k), and 1M weights at 256 clusters take well under a second.

Example:
    >>> result = kmeans_1d(np.array([0.0, 0.1, 0.9, 1.0]), 2)
    >>> result.centroids.tolist(), result.labels.tolist()
    ([0.05, 0.95], [0, 0, 1, 1])
"""

import bisect
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError

Init = Literal["linear", "density", "random", "kmeans++"]
_BLOCK = 1024  # k-means++ keeps its sampling weights in blocks of this many values


@dataclass(frozen=True)
class KMeans1d:
    """Sorted `centroids` (k,), `labels` (n,) into them, the `inertia` (sum of squared errors)
    and the number of Lloyd `iterations` run."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    iterations: int


def init_centroids(
    values: np.ndarray, k: int, init: Init | np.ndarray, seed: int = 0
) -> np.ndarray:
    """k starting centroids, sorted (Han et al. 2016, section 3.1).

    `linear` spaces them evenly over [min, max] (the paper's best after fine-tuning: it keeps the
    rare large weights); `density` at evenly spaced quantiles; `random` picks k of the values
    (Forgy), with `seed`; `kmeans++` samples them by squared distance (Arthur & Vassilvitskii
    2007, greedy as in scikit-learn), with `seed`, which leaves the least error. An array of k
    values is taken as given (a warm start).
    """
    if not isinstance(init, str):
        start = np.sort(np.asarray(init, dtype=np.float64).ravel())
        if start.size != k or not np.isfinite(start).all():
            raise ConfigError(f"k-means start needs {k} finite centroids, got {start.size}")
        return start
    if init == "linear":
        return np.linspace(values.min(), values.max(), k)
    if init == "density":
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    if init == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(values, size=k, replace=values.size < k))
    if init == "kmeans++":
        return _kmeans_pp(np.sort(values), k, np.random.default_rng(seed))
    raise ConfigError(f"unknown k-means init {init!r}: use linear, density, random or kmeans++")


def _kmeans_pp(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding on sorted scalars, in about O(n log k) (as scikit-learn: each
    step draws 2 + ln k candidates by squared distance and keeps the one that lowers the error
    most).

    A new centre can only become the nearest for values between the midpoints to its sorted
    neighbours, so only that window's squared distances are read and updated; draws go through
    per-block sums, so one costs O(n / block + block) instead of a pass over all values.
    """
    n, trials = xs.size, 2 + int(np.log(k))
    blocks = -(-n // _BLOCK)
    padded = np.zeros(blocks * _BLOCK)
    d2, grid = padded[:n], padded.reshape(blocks, _BLOCK)  # views of one buffer
    centres = [float(xs[rng.integers(n)])]
    d2[:] = (xs - centres[0]) ** 2
    sums = grid.sum(1)
    while len(centres) < k:
        if sums.sum() <= 0:  # every value sits on a centre: the rest are unused repeats
            centres += [centres[0]] * (k - len(centres))
            break
        best = max(
            (_window_gain(xs, d2, centres, _draw(xs, grid, sums, rng)) for _ in range(trials)),
            key=lambda candidate: candidate[0],
        )
        _, c, at, lo, hi = best
        np.minimum(d2[lo:hi], (xs[lo:hi] - c) ** 2, out=d2[lo:hi])
        sums[lo // _BLOCK : -(-hi // _BLOCK)] = grid[lo // _BLOCK : -(-hi // _BLOCK)].sum(1)
        centres.insert(at, c)
    return np.array(centres)


def _draw(xs, grid, sums, rng) -> float:
    """One value drawn with probability proportional to its squared distance (`grid`)."""
    cumulative = np.cumsum(sums)
    target = rng.random() * cumulative[-1]
    b = min(int(np.searchsorted(cumulative, target, side="right")), len(sums) - 1)
    target -= cumulative[b - 1] if b else 0.0
    i = min(int(np.searchsorted(np.cumsum(grid[b]), target, side="right")), _BLOCK - 1)
    return float(xs[min(b * _BLOCK + i, xs.size - 1)])


def _window_gain(xs, d2, centres, c):
    """(error removed, c, insert position, window) of adding centre `c`."""
    at = bisect.bisect(centres, c)
    lo = int(np.searchsorted(xs, (centres[at - 1] + c) / 2)) if at else 0
    hi = int(np.searchsorted(xs, (c + centres[at]) / 2, "right")) if at < len(centres) else xs.size
    old = d2[lo:hi]
    return float((old - np.minimum(old, (xs[lo:hi] - c) ** 2)).sum()), c, at, lo, hi


def kmeans_1d(
    values: np.ndarray | torch.Tensor,
    k: int,
    *,
    init: Init | np.ndarray = "linear",
    seed: int = 0,
    max_iter: int = 1000,
) -> KMeans1d:
    """Lloyd's k-means on scalars, with exact nearest-centroid assignment by sorted boundaries.

    Runs until the assignment stops changing (a fixed point) or `max_iter`. A centroid left
    without members moves to the best split of the cluster with the largest error, so all k are
    used (and k >= the number of distinct values reproduces them exactly, as long as they differ
    by more than the rounding of a running sum over them). A value exactly between two
    centroids goes to the lower one. Deterministic for a given `seed` (which only `random` and
    `kmeans++` use). Used by `share_kmeans` (Han et al. 2016).
    """
    x = _as_float64(values)
    if k < 1:
        raise ConfigError(f"k-means needs at least 1 cluster, got {k}")
    xs = np.sort(x)
    sums = np.concatenate([[0.0], np.cumsum(xs)])
    centroids = init_centroids(xs, k, init, seed)
    splits = None
    fixed_points = set()  # a relocation that rounding undoes must not repeat forever
    iterations = 0
    for iterations in range(1, max_iter + 1):
        new_splits = _splits(xs, centroids)
        if splits is not None and np.array_equal(new_splits, splits):
            moved = _relocate_empty(xs, centroids, splits)
            if moved is None or splits.tobytes() in fixed_points:
                break
            fixed_points.add(splits.tobytes())
            centroids, new_splits = moved, _splits(xs, moved)
        splits = new_splits
        starts, ends = np.concatenate([[0], splits]), np.concatenate([splits, [xs.size]])
        counts = ends - starts
        means = (sums[ends] - sums[starts]) / np.maximum(counts, 1)
        # the means of consecutive intervals are sorted; an empty one keeps its old value, which
        # lies between its neighbours' new means, so the order holds (sorting is a no-op guard)
        centroids = np.sort(np.where(counts > 0, means, centroids))
    centroids = _exact_means(xs, centroids)
    labels = np.searchsorted(_midpoints(centroids), x, side="left")
    return KMeans1d(centroids, labels, _inertia(xs, centroids), iterations)


def _exact_means(xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The clusters' means summed directly, once: prefix-sum differences are fast but lose the
    low bits (a cluster of one value must get exactly that value back)."""
    bounds = np.concatenate([[0], _splits(xs, centroids), [xs.size]])
    counts = np.diff(bounds)
    full = counts > 0
    means = centroids.copy()
    means[full] = np.add.reduceat(xs, bounds[:-1][full]) / counts[full]
    return np.sort(means)


def _relocate_empty(xs: np.ndarray, centroids: np.ndarray, splits: np.ndarray):
    """Centroids with one empty cluster's centroid moved to split, at its best point, the cluster
    with the largest error; None when no cluster is empty or the largest error is 0."""
    bounds = np.concatenate([[0], splits, [xs.size]])
    counts = np.diff(bounds)
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return None
    errors = [
        float(np.square(xs[a:b] - xs[a:b].mean()).sum()) if b - a > 1 else 0.0
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    j = int(np.argmax(errors))
    segment = xs[bounds[j] : bounds[j + 1]]
    if errors[j] <= 0 or segment[0] == segment[-1]:
        return None
    left, right = _best_split(segment)
    moved = centroids.copy()
    moved[j], moved[empty[0]] = left, right
    return np.sort(moved)


def _best_split(segment: np.ndarray) -> tuple[float, float]:
    """The two means of the best split of a sorted segment (with two distinct values at least)."""
    n = segment.size
    left_n = np.arange(1, n)
    cumsum = np.cumsum(segment)[:-1]
    total = segment.sum()
    # error = sum x^2 - sum_left^2 / n_left - sum_right^2 / n_right: maximise the last two terms
    kept = cumsum**2 / left_n + (total - cumsum) ** 2 / (n - left_n)
    i = int(np.argmax(kept))
    return cumsum[i] / left_n[i], (total - cumsum[i]) / (n - left_n[i])


def _as_float64(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ConfigError("k-means needs at least one value: the layer has no surviving weights")
    if not np.isfinite(x).all():
        raise ConfigError("k-means got NaN or infinite weights: the model has diverged")
    return x


def _midpoints(centroids: np.ndarray) -> np.ndarray:
    return (centroids[1:] + centroids[:-1]) / 2


def _splits(xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Where each cluster of the sorted data ends: values <= a midpoint go to the lower side."""
    return np.searchsorted(xs, _midpoints(centroids), side="right")


def _inertia(xs: np.ndarray, centroids: np.ndarray) -> float:
    splits = _splits(xs, centroids)
    counts = np.diff(np.concatenate([[0], splits, [xs.size]]))
    # squared distances to the repeated centroids directly: no prefix-sum cancellation
    d = xs - np.repeat(centroids, counts)
    return float(d @ d)

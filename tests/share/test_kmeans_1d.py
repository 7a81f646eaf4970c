"""The scalar k-means of Deep Compression: exact nearest-centroid assignment, Lloyd never worse
than its start, more centroids never worse, exact with enough clusters, deterministic."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netshrink.errors import ConfigError
from netshrink.share.kmeans import init_centroids, kmeans_1d

values = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=80).map(
    np.array
)
inits = st.sampled_from(["linear", "density", "random", "kmeans++"])


def _inertia(x, centroids, labels):
    return float(((x - centroids[labels]) ** 2).sum())


def _assignment_inertia(x, centroids):
    return float(((x[:, None] - np.sort(centroids)[None, :]) ** 2).min(1).sum())


@settings(max_examples=150, deadline=None)
@given(values, st.integers(1, 20), inits, st.integers(0, 2**16))
def test_labels_are_the_nearest_centroid_and_inertia_matches(x, k, init, seed):
    result = kmeans_1d(x, k, init=init, seed=seed)
    distance = (x[:, None] - result.centroids[None, :]) ** 2
    chosen = distance[np.arange(x.size), result.labels]
    assert np.all(chosen <= distance.min(1))  # exact, not approximate, assignment
    assert np.all(np.diff(result.centroids) >= 0)
    assert result.inertia == pytest.approx(_inertia(x, result.centroids, result.labels), abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(values, st.integers(1, 20), inits, st.integers(0, 2**16))
def test_lloyd_never_ends_worse_than_its_start(x, k, init, seed):
    start = init_centroids(np.sort(x.astype(np.float64)), k, init, seed)
    result = kmeans_1d(x, k, init=init, seed=seed)
    assert result.inertia <= _assignment_inertia(x, start) * (1 + 1e-12) + 1e-12


@settings(max_examples=150, deadline=None)
@given(values, st.integers(1, 12), st.lists(st.floats(-100, 100), min_size=1, max_size=8))
def test_inertia_is_monotone_in_k(x, k, extra):
    # From the k-centroid solution, adding centroids can only lower the error (Lloyd from there
    # is monotone). Lloyd from two unrelated starts is not comparable: local optima differ.
    base = kmeans_1d(x, k, init="density")
    more = kmeans_1d(x, k + len(extra), init=np.concatenate([base.centroids, extra]))
    assert more.inertia <= base.inertia * (1 + 1e-12) + 1e-12
    assert kmeans_1d(x, 1).inertia >= base.inertia - 1e-9


# distinct values that running sums can tell apart (1e-38 beside 1.0 they cannot)
grid_values = st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=80).map(
    lambda v: np.array(v) / 1024
)


@settings(max_examples=100, deadline=None)
@given(grid_values, inits, st.integers(0, 4))
def test_as_many_clusters_as_values_reproduce_them_exactly(x, init, spare):
    k = np.unique(x).size + spare
    result = kmeans_1d(x, k, init=init)
    assert np.array_equal(result.centroids[result.labels], x.astype(np.float64))
    assert result.inertia == 0


@settings(max_examples=60, deadline=None)
@given(values, st.integers(1, 20), inits, st.integers(0, 2**16))
def test_deterministic_under_a_seed(x, k, init, seed):
    a, b = kmeans_1d(x, k, init=init, seed=seed), kmeans_1d(x.copy(), k, init=init, seed=seed)
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.labels, b.labels)


def test_linear_init_spans_min_to_max_and_density_follows_quantiles():
    x = np.array([0.0, 0.0, 0.0, 1.0, 10.0])
    assert init_centroids(x, 3, "linear").tolist() == [0.0, 5.0, 10.0]
    assert init_centroids(x, 2, "density").tolist() == pytest.approx(np.quantile(x, [0.25, 0.75]))


def test_kmeans_plus_plus_matches_a_large_sample_quickly():
    x = np.random.default_rng(0).laplace(size=200_000) * 0.05
    result = kmeans_1d(x, 64, init="kmeans++")
    assert np.unique(result.labels).size == 64
    # within a percent of the optimum's scale: uniform-in-density quantizers are much worse
    assert result.inertia < 0.5 * kmeans_1d(x, 64, init="density", max_iter=1).inertia


def test_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="no surviving weights"):
        kmeans_1d(np.array([]), 4)
    with pytest.raises(ConfigError, match="diverged"):
        kmeans_1d(np.array([1.0, np.nan]), 2)
    with pytest.raises(ConfigError, match="use linear"):
        kmeans_1d(np.array([1.0, 2.0]), 2, init="uniform")
    with pytest.raises(ConfigError, match="at least 1 cluster"):
        kmeans_1d(np.array([1.0]), 0)

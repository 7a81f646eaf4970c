"""Shared fixtures: small, fast data sets and quiet, single-threaded torch (xdist runs two workers
on two cores, so each worker gets one thread)."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("NETSHRINK_PROGRESS", "0")
torch.set_num_threads(1)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def require_fashion_mnist() -> None:
    """Skip when the data set is absent, except in CI, where .ci/run installs it: fail there."""
    if not FASHION_DIR.is_dir():
        message = "Fashion-MNIST is not installed: apt-get install -y dataset-fashion-mnist"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits: 1797 images, trains in a second."""
    from netshrink.data import DataConfig, load_data

    return load_data(DataConfig(source="digits"))


@pytest.fixture(scope="session")
def fashion_slice():
    """A 10000-example slice of each Fashion-MNIST split (the real data, a fraction of the time)."""
    from netshrink.data import DataConfig, load_data

    require_fashion_mnist()
    return load_data(DataConfig(source="fashion-mnist", limit=10000))


@pytest.fixture(scope="module")
def mlp(digits):
    """LeNet-300-100 after ten epochs on digits (one per test module: tests may change it)."""
    from helpers import train_on_digits
    from netshrink.train import FitConfig

    return train_on_digits(digits, FitConfig(epochs=10, lr=0.05))

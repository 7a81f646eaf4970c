"""Baselines: train a model from the zoo (or a user's factory) and cache it by what made it.

Pretrained weights cannot be downloaded, so every baseline is trained here once and kept in a
cache directory outside git, keyed by the model spec, the data config and the fit config (seed
included): any change to those trains a new one, and nothing else ever does.
"""

import hashlib
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    CheckpointMeta,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)
from .config import takes_mappings
from .data import DataConfig, DataSplits
from .device import place
from .files import waiting_lock
from .models import ModelSpec, build_model
from .models.registry import AllowImport, check_buildable
from .terminal import console
from .train import FitConfig, evaluate, fit, is_main_process

_FASHION = DataConfig(source="fashion-mnist")
_FASHION_AUGMENTED = DataConfig(source="fashion-mnist", crop_padding=2, hflip=True)

# The zoo's Fashion-MNIST baselines, shared by `netshrink demo` and the benchmarks so that both
# reuse one cached training. Epochs were chosen to reach the bands in docs/benchmarks.md.
BASELINES: dict[str, tuple[ModelSpec, DataConfig, FitConfig]] = {
    "lenet300_100": (ModelSpec(name="lenet300_100"), _FASHION, FitConfig(epochs=20, lr=0.05)),
    "lenet5": (ModelSpec(name="lenet5"), _FASHION, FitConfig(epochs=20, lr=0.05)),
    "lenet5_caffe": (ModelSpec(name="lenet5_caffe"), _FASHION, FitConfig(epochs=12, lr=0.05)),
    "vgg_small": (ModelSpec(name="vgg_small"), _FASHION_AUGMENTED, FitConfig(epochs=12, lr=0.05)),
    # For filter pruning across residual blocks (bench/peers.py); 28x28 input, no resizing.
    "resnet20": (ModelSpec(name="resnet20"), _FASHION_AUGMENTED, FitConfig(epochs=10, lr=0.05)),
    # The seed papers' networks (Kim et al.: VGG-16, GoogLeNet; Shin & Oh: DenseNet) at full depth
    # but CPU width, trained for few epochs: an epoch took about 2.5 (vgg16), 13 (googlenet) and
    # 6 (densenet) minutes at 1 thread on the 28x28 images.
    "vgg16": (
        ModelSpec(name="vgg16", args={"width": 0.25}),
        _FASHION_AUGMENTED,
        FitConfig(epochs=8, lr=0.05),
    ),
    "googlenet": (
        ModelSpec(name="googlenet", args={"width": 0.125}),
        _FASHION_AUGMENTED,
        FitConfig(epochs=3, lr=0.05),
    ),
    "densenet": (
        ModelSpec(name="densenet", args={"growth": 6}),
        _FASHION_AUGMENTED,
        FitConfig(epochs=4, lr=0.05),
    ),
}


def default_cache_dir() -> Path:
    """$NETSHRINK_CACHE, else ~/.cache/netshrink."""
    return Path(os.environ.get("NETSHRINK_CACHE") or Path.home() / ".cache" / "netshrink")


@takes_mappings
def train_model(
    spec: ModelSpec,
    data: DataSplits,
    config: FitConfig,
    *,
    progress: bool = True,
    resume: Path | None = None,
    allow_import: AllowImport = (),
    device: str | torch.device | None = None,
) -> tuple[nn.Module, CheckpointMeta]:
    """Build `spec` for `data`'s input shape, train it with `fit`, and measure it on the test split.

    The returned metadata holds the final validation and test accuracy. `resume` is passed to
    `fit`: an interrupted training continues from its last completed epoch. A spec naming an
    import path is built only when `allow_import` lists it (netshrink.models.registry).
    """
    torch.manual_seed(config.seed)
    c, h, _ = data.input_shape
    model = build_model(
        spec,
        num_classes=data.num_classes,
        in_channels=c,
        input_size=h,
        allow_import=allow_import,
    )
    start = time.perf_counter()
    history = fit(model, data, config, progress=progress, resume=resume, device=device)
    seconds = time.perf_counter() - start
    test = evaluate(model, data.loader("test", 256), progress=progress, description="test")
    metrics = {
        "test_top1": test.top1,
        "test_top5": test.top5,
        "test_loss": test.loss,
        "train_seconds": seconds,
    }
    if history.final is not None:
        metrics["val_top1"] = history.final.top1
    meta = CheckpointMeta(
        model=spec,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        data=data.config,
        fit=config,
        metrics=metrics,
    )
    return model, meta


def baseline_key(spec: ModelSpec, data: DataConfig, config: FitConfig) -> str:
    """A short stable hash of everything that determines a trained baseline."""
    text = json.dumps(
        [
            spec.model_dump(mode="json"),
            data.model_dump(mode="json", exclude={"workers"}),  # never changes a result
            config.model_dump(mode="json"),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_stem(
    spec: ModelSpec, data: DataConfig, config: FitConfig, cache_dir: Path | None = None
) -> Path:
    """Where `cached_baseline` keeps the baseline for (spec, data, config)."""
    directory = (cache_dir or default_cache_dir()) / "baselines"
    return directory / f"{spec.name.replace(':', '-')}-{baseline_key(spec, data, config)}"


def is_cached(stem: Path) -> bool:
    return all(p.is_file() for p in checkpoint_paths(stem))


@takes_mappings
def cached_baseline(
    spec: ModelSpec,
    data: DataSplits,
    config: FitConfig,
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    allow_import: AllowImport = (),
    device: str | torch.device | None = None,
) -> tuple[nn.Module, CheckpointMeta, Path]:
    """Load the baseline for (spec, data, config) from `cache_dir`/baselines, training it if missing.

    Returns the model (on `device` when given), its metadata and the checkpoint's path (stem).
    The cache is keyed by what decides the weights, not by the device. A process asking for a
    baseline that another one is training waits for it (a lock file beside the checkpoint).
    """
    check_buildable(spec, allow_import)  # a refused model leaves nothing in the cache
    stem = cache_stem(spec, data.config, config, cache_dir)
    if is_cached(stem):  # before any lock: a cache others made may be read-only
        return _load(stem, allow_import, device)
    # One process trains a baseline, the others wait and load it: two trainings would write
    # the same .partial state. A torchrun job's ranks train together, so they take no lock.
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    lock = stem.with_name(stem.name + ".lock")
    with waiting_lock(lock, lambda: _say_waiting(stem, progress)) if single else nullcontext():
        if is_cached(stem):  # trained by the process we waited for
            return _load(stem, allow_import, device)
        return _train_into(stem, spec, data, config, progress, allow_import, device)


def _load(stem: Path, allow_import: AllowImport, device) -> tuple[nn.Module, CheckpointMeta, Path]:
    model, meta = load_checkpoint(stem, allow_import=allow_import)
    return place(model, device), meta, stem


def _say_waiting(stem: Path, progress: bool) -> None:
    if progress:
        console().print(f"baseline {stem.name}: another process is training it; waiting for it")


def _train_into(stem, spec, data, config, progress, allow_import, device):
    model, meta = train_model(
        spec,
        data,
        config,
        progress=progress,
        resume=stem.with_name(stem.name + ".partial"),
        allow_import=allow_import,
        device=device,
    )
    if is_main_process():
        save_checkpoint(model, stem, meta)
    return model.eval(), meta, stem

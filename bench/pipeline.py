"""The benchmarks' shared pipeline steps: the cached baselines and the Han-style pruned models.

bench/prune.py measures the iterative pruning recipe below; bench/share.py and bench/codec.py
start from its result, cached next to the baselines (keyed by the baseline and the recipe), so
that every table builds on the same pruned models.
"""

import copy
import hashlib
import json

from netshrink.baseline import BASELINES, baseline_key, cached_baseline, default_cache_dir
from netshrink.checkpoint import CheckpointMeta, checkpoint_paths, load_checkpoint, save_checkpoint
from netshrink.data import load_data
from netshrink.layers import select_layers
from netshrink.prune import (
    PruneIterativeConfig,
    PruneMagnitudeConfig,
    StdThreshold,
    prune_iterative,
    restore_masks,
)
from netshrink.train import FitConfig

# Per-layer std ratios (Han et al. 2015: the first conv and the last fc are pruned least).
PRUNE_RATIOS = {
    "lenet300_100": {"fc1": 2.0, "fc2": 1.75, "fc3": 1.25},
    "lenet5_caffe": {"conv1": 1.0, "conv2": 1.5, "fc1": 2.0, "fc2": 1.25},
}
PRUNE_STEPS = 3
RETRAIN_EPOCHS, RETRAIN_LR = 4, 0.02  # per step; lr 0.01 or 0.005 left 0.5-0.8 pt behind


def baseline(name: str):
    """(dense model in eval mode, data splits, the fit config it was trained with)."""
    spec, data_config, fit_config = BASELINES[name]
    data = load_data(data_config)
    model, _, _ = cached_baseline(spec, data, fit_config, progress=False)
    return model.eval(), data, fit_config


def pruning_config(name: str, batch_size: int, seed: int) -> PruneIterativeConfig:
    """Han et al.'s iterative std-threshold pruning with retraining, as the benchmarks run it."""
    ratios = PRUNE_RATIOS[name]
    threshold = StdThreshold(ratio=max(ratios.values()))
    return PruneIterativeConfig(
        prune=PruneMagnitudeConfig(threshold=threshold, per_layer=ratios),
        steps=PRUNE_STEPS,
        retrain=FitConfig(epochs=RETRAIN_EPOCHS, lr=RETRAIN_LR, batch_size=batch_size, seed=seed),
    )


def pruned_baseline(name: str, seed: int = 0):
    """(dense, pruned with masks restored, data): the pruning recipe's result, cached."""
    dense, data, base_fit = baseline(name)
    spec, data_config, _ = BASELINES[name]
    config = pruning_config(name, base_fit.batch_size, seed)
    text = json.dumps([baseline_key(spec, data_config, base_fit), config.model_dump(mode="json")])
    stem = (
        default_cache_dir() / "pruned" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    )
    if all(p.is_file() for p in checkpoint_paths(stem)):
        model, _ = load_checkpoint(stem)
    else:
        model = prune_iterative(copy.deepcopy(dense), data, config, progress=False)
        meta = CheckpointMeta(
            model=spec,
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            data=data_config,
            fit=config.retrain,
        )
        save_checkpoint(model, stem, meta)
    restore_masks(model, select_layers(model))
    return dense, model.eval(), data

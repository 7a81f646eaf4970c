"""Iterative pruning: prune a little, retrain, repeat (Han et al. 2015).

The threshold rises in equal steps to its final value; between steps the model retrains with the
ordinary `fit`, usually at a lower learning rate. Masks only ever grow, so a pruned weight stays
exactly zero through retraining, momentum and weight decay.
"""

from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from torch import nn

from ..config import Settings, takes_mappings
from ..data import DataSplits
from ..layers import LayerFilter
from ..loaders import LoaderSplits, as_data
from ..stage import Stage
from ..train import EvalResult, FitConfig, fit
from .magnitude import (
    GlobalSparsity,
    LayerSparsity,
    PruneMagnitudeConfig,
    StdThreshold,
    prune_magnitude,
)


class PruneIterativeConfig(Settings):
    """Reach `prune.threshold` in `steps` equal steps, retraining with `retrain` after each."""

    prune: PruneMagnitudeConfig
    steps: int = Field(3, ge=1)
    retrain: FitConfig = FitConfig(epochs=2, lr=0.005)


@dataclass(frozen=True)
class IterativeStep:
    step: int
    threshold: PruneMagnitudeConfig
    val: EvalResult | None


def step_config(config: PruneMagnitudeConfig, fraction: float) -> PruneMagnitudeConfig:
    """The magnitude config at `fraction` of the way to `config` (ratio or sparsity scaled)."""
    t = config.threshold
    if isinstance(t, StdThreshold):
        threshold = StdThreshold(ratio=t.ratio * fraction)
    elif isinstance(t, LayerSparsity):
        threshold = LayerSparsity(sparsity=t.sparsity * fraction)
    else:
        threshold = GlobalSparsity(sparsity=t.sparsity * fraction)
    per_layer = {name: value * fraction for name, value in config.per_layer.items()}
    return config.model_copy(update={"threshold": threshold, "per_layer": per_layer})


@takes_mappings
def prune_iterative(
    model: nn.Module,
    data: DataSplits | LoaderSplits,
    config: PruneIterativeConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
    log: list[IterativeStep] | None = None,
) -> nn.Module:
    """Prune to `config.prune` in `config.steps` steps with retraining between; returns model.

    Follows Han et al. 2015. Pass a list as `log` to receive each step's threshold and validation
    accuracy.
    """
    data = as_data(data)
    for step in range(1, config.steps + 1):
        current = step_config(config.prune, step / config.steps)
        prune_magnitude(model, current, layers=layers)
        history = fit(model, data, config.retrain, progress=progress)
        if log is not None:
            log.append(IterativeStep(step, current, history.final))
    return model


class PruneIterativeStage(Stage):
    """Prune and retrain in steps (Han et al. 2015)."""

    method: Literal["prune_iterative"]
    config: PruneIterativeConfig

    def apply(self, model, ctx):
        return prune_iterative(
            model, ctx.data, self.config, layers=self.layers, progress=ctx.progress
        )

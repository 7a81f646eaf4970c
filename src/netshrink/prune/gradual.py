"""Gradual pruning on the cubic schedule of Zhu & Gupta 2017 ("To prune, or not to prune").

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3,   t in {t0, t0 + dt, ..., t0 + n dt}

Sparsity rises fast while there is redundancy to spare and slowly near the end. `GradualPruner`
is a callable you step from any training loop; `fit(..., step_hooks=[pruner])` is the usual one.
"""

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config import Settings, takes_mappings
from ..data import DataSplits
from ..errors import ConfigError
from ..layers import LayerFilter, select_layers
from ..loaders import LoaderSplits, as_data
from ..stage import Stage
from ..train import FitConfig, fit
from .magnitude import (
    GlobalSparsity,
    LayerSparsity,
    PruneMagnitudeConfig,
    prune_magnitude,
)


class PruneGradualConfig(Settings):
    """Sparsity goes from `initial_sparsity` at step `start_step` to `final_sparsity` after
    `steps` updates, one every `interval` optimizer steps; `scope` is per layer or global."""

    final_sparsity: float = Field(ge=0, lt=1)
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    start_step: int = Field(0, ge=0)
    steps: int = Field(10, ge=1)
    interval: int = Field(100, ge=1)
    scope: Literal["layer", "global"] = "layer"

    @model_validator(mode="after")
    def _rising(self):
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError("initial_sparsity must not exceed final_sparsity")
        return self

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps * self.interval


def training_steps(data: DataSplits, fit_config: FitConfig) -> int:
    """Optimizer steps of a `fit` with `fit_config` on `data`: what a schedule is spread over."""
    return fit_config.epochs * len(data.loader("train", fit_config.batch_size))


def spread_over(config: PruneGradualConfig, total_steps: int, share: float) -> PruneGradualConfig:
    """`config` with `interval` chosen so that its `steps` updates end after `share` of a
    training of `total_steps` steps; the model then trains on at its final sparsity (Zhu &
    Gupta stop pruning well before the end)."""
    return config.model_copy(update={"interval": max(1, int(share * total_steps) // config.steps)})


def cubic_sparsity(step: int, config: PruneGradualConfig) -> float:
    """The schedule's sparsity at `step` (flat before the start and after the end)."""
    s_i, s_f = config.initial_sparsity, config.final_sparsity
    progress = min(max(step - config.start_step, 0) / (config.steps * config.interval), 1.0)
    return s_f + (s_i - s_f) * (1 - progress) ** 3


class GradualPruner:
    """Call with the global step after each optimizer step; on the schedule's update steps it
    raises the masks of the chosen layers to the scheduled sparsity (masks only ever grow)."""

    def __init__(
        self, model: nn.Module, config: PruneGradualConfig, layers: LayerFilter = None
    ) -> None:
        self.model, self.config = model, config
        self.layer_names = [name for name, _ in select_layers(model, layers)]
        if not self.layer_names:
            raise ConfigError("gradual pruning found no convolution or linear layer to prune")
        self.sparsity = 0.0

    def __call__(self, step: int) -> None:
        c = self.config
        offset = step - c.start_step
        if offset < 0 or step > c.end_step or offset % c.interval:
            return
        self.prune_to(cubic_sparsity(step, c))

    def prune_to(self, sparsity: float) -> None:
        """Raise every chosen layer's masks to `sparsity` now."""
        threshold = (
            GlobalSparsity(sparsity=sparsity)
            if self.config.scope == "global"
            else LayerSparsity(sparsity=sparsity)
        )
        with torch.no_grad():
            prune_magnitude(
                self.model, PruneMagnitudeConfig(threshold=threshold), layers=self.layer_names
            )
        self.sparsity = sparsity


@takes_mappings
def prune_gradual(
    model: nn.Module,
    data: DataSplits | LoaderSplits,
    config: PruneGradualConfig,
    fit_config: FitConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> nn.Module:
    """Train `model` with `fit` while its sparsity follows the cubic schedule; returns the model.

    The schedule must end within the training run, so that the model trains on at its final
    sparsity (Zhu & Gupta end pruning before the learning rate has decayed).
    """
    data = as_data(data)
    total = training_steps(data, fit_config)
    if config.end_step > total:
        raise ConfigError(
            f"the gradual schedule ends at step {config.end_step} but training has "
            f"only {total} steps: lower steps or interval, or train longer"
        )
    pruner = GradualPruner(model, config, layers)
    if config.start_step == 0:  # the hooks start at step 1: apply the initial sparsity now
        pruner(0)
    fit(model, data, fit_config, step_hooks=[pruner], progress=progress)
    return model


# Gradual pruning reaches its final sparsity after this share of the training steps, then the
# model trains on at that sparsity (Zhu & Gupta 2017 stop pruning well before the end).
GRADUAL_SHARE = 0.75


def gradual_schedule(
    config: PruneGradualConfig, fit_config: FitConfig, data: DataSplits
) -> PruneGradualConfig:
    """`config` with `interval` spread over GRADUAL_SHARE of a `fit` with `fit_config` on `data`,
    unless the config sets `interval` itself: the one rule of every face and of distillation."""
    if "interval" in config.model_fields_set:
        return config
    total = training_steps(data, fit_config)
    if total < 2:
        raise ConfigError("gradual pruning happens while training: give it epochs to train")
    return spread_over(config, total, GRADUAL_SHARE)


class PruneGradualStage(Stage):
    """Prune on Zhu & Gupta's cubic schedule while training with `fit`; unless the config sets
    `interval`, the sparsity is reached after 75% of the steps."""

    method: Literal["prune_gradual"]
    config: PruneGradualConfig
    fit: FitConfig

    def apply(self, model, ctx):
        config = gradual_schedule(self.config, self.fit, ctx.data)
        return prune_gradual(
            model, ctx.data, config, self.fit, layers=self.layers, progress=ctx.progress
        )

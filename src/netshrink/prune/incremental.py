"""Incremental pruning without retraining (Al-Hami et al.).

Layer by layer, the std-scaled threshold ratio rises in small steps while the accuracy on a
held-out calibration slice stays within a budget of the unpruned model's; the last ratio that
kept within budget is the layer's. No gradient step is taken: the result is a per-layer ratio
table, applied as an ordinary magnitude config.
"""

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..budget import Points, floor_below
from ..config import Settings, takes_mappings
from ..data import BatchLoader
from ..layers import LayerFilter, copy_model, select_layers
from ..progress import make_progress
from ..stage import Stage
from ..train import evaluate
from .magnitude import PruneMagnitudeConfig, StdThreshold, prune_magnitude


class PruneIncrementalConfig(Settings):
    """Raise each layer's ratio by `step` up to `max_ratio` while the calibration accuracy stays
    within `budget` percentage points of the unpruned model's (netshrink.budget)."""

    budget: Points = 1.0
    step: float = Field(0.1, gt=0)
    max_ratio: float = Field(3.0, gt=0)


def incremental_ratios(
    model: nn.Module,
    calibration: BatchLoader,
    config: PruneIncrementalConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> dict[str, float]:
    """The per-layer ratio table. Each layer is raised with the earlier layers already pruned at
    their chosen ratios, so the budget holds for the whole model, not for each layer alone."""
    work = copy_model(model)
    floor = floor_below(evaluate(work, calibration).top1, config.budget)
    names = [name for name, _ in select_layers(work, layers)]
    candidates = [
        round(config.step * i, 6) for i in range(1, int(config.max_ratio / config.step + 1e-9) + 1)
    ]
    table: dict[str, float] = {}
    with make_progress(progress) as bar:
        task = bar.add_task("incremental pruning", total=len(names), status="")
        for name in names:
            table[name] = _largest_ratio(work, name, candidates, calibration, floor)
            if table[name] > 0:
                _prune(work, name, table[name])
            bar.update(task, advance=1, status=f"{name}: ratio {table[name]:.2f}")
    return table


@takes_mappings
def prune_incremental(
    model: nn.Module,
    calibration: BatchLoader,
    config: PruneIncrementalConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> nn.Module:
    """Find the per-layer ratios (Al-Hami et al.) and prune `model` with them; returns model."""
    table = incremental_ratios(model, calibration, config, layers=layers, progress=progress)
    kept = {name: ratio for name, ratio in table.items() if ratio > 0}
    if kept:
        prune_magnitude(model, ratio_table_config(kept), layers=list(kept))
    return model


def ratio_table_config(table: dict[str, float]) -> PruneMagnitudeConfig:
    """A magnitude config that applies a per-layer std-ratio table."""
    return PruneMagnitudeConfig(threshold=StdThreshold(ratio=max(table.values())), per_layer=table)


def _largest_ratio(model, name, candidates, calibration, floor) -> float:
    """The largest candidate ratio for `name` whose accuracy stays >= floor (0.0 if none)."""
    best = 0.0
    for ratio in candidates:
        trial = copy_model(model)
        _prune(trial, name, ratio)
        if evaluate(trial, calibration).top1 < floor:
            break
        best = ratio
    return best


def _prune(model: nn.Module, name: str, ratio: float) -> None:
    with torch.no_grad():
        prune_magnitude(
            model, PruneMagnitudeConfig(threshold=StdThreshold(ratio=ratio)), layers=[name]
        )


class PruneIncrementalStage(Stage):
    """Raise each layer's std ratio while validation accuracy holds, no retraining (Al-Hami)."""

    method: Literal["prune_incremental"]
    config: PruneIncrementalConfig = PruneIncrementalConfig()

    def apply(self, model, ctx):
        loader = ctx.data.loader("val" if ctx.data.has("val") else "train", 256)
        return prune_incremental(model, loader, self.config, layers=self.layers)

"""Per-layer pruning sensitivity (Han et al. 2015, Figure 5; Li et al. 2017, Figure 2).

Each prunable layer is pruned alone, at sparsities from 0 to 95%, and the model evaluated; the
curves show which layers tolerate pruning. `budget_sparsities` turns them into a per-layer table:
the largest sparsity at which each layer alone stays within an accuracy budget.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..budget import floor_below
from ..config import takes_mappings
from ..data import BatchLoader
from ..files import atomic_write
from ..layers import LayerFilter, copy_model, select_layers
from ..progress import make_progress
from ..stage import Stage
from ..train import evaluate
from .magnitude import LayerSparsity, PruneMagnitudeConfig, prune_magnitude

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class Sensitivity:
    """Top-1 accuracy of the model with one layer pruned, for each layer and sparsity."""

    baseline_top1: float
    sparsities: tuple[float, ...]
    curves: dict[str, list[float]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


@takes_mappings
def sensitivity_analysis(
    model: nn.Module,
    loader: BatchLoader,
    *,
    layers: LayerFilter = None,
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES,
    progress: bool = True,
) -> Sensitivity:
    """Prune each chosen layer alone at each sparsity (on a copy) and measure top-1 on `loader`."""
    baseline = evaluate(model, loader).top1
    names = [name for name, _ in select_layers(model, layers)]
    curves: dict[str, list[float]] = {}
    with make_progress(progress) as bar:
        task = bar.add_task("sensitivity", total=len(names) * len(sparsities), status="")
        for name in names:
            curves[name] = []
            for sparsity in sparsities:
                trial = copy_model(model)
                with torch.no_grad():
                    prune_magnitude(
                        trial,
                        PruneMagnitudeConfig(threshold=LayerSparsity(sparsity=sparsity)),
                        layers=[name],
                    )
                curves[name].append(evaluate(trial, loader).top1)
                bar.update(task, advance=1, status=name)
    return Sensitivity(baseline, tuple(sparsities), curves)


def budget_sparsities(result: Sensitivity, budget: float) -> dict[str, float]:
    """Per layer, the largest measured sparsity whose accuracy stays within `budget` percentage
    points of the baseline, counting only sparsities below the first one that breaks it."""
    table = {}
    for name, accuracies in result.curves.items():
        best = 0.0
        for sparsity, top1 in zip(result.sparsities, accuracies):
            if top1 < floor_below(result.baseline_top1, budget):
                break
            best = sparsity
        table[name] = best
    return table


def plot_sensitivity(result: Sensitivity, path: str | Path, title: str = "") -> Path:
    """One curve a layer: top-1 against sparsity, with the unpruned accuracy as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    percent = [100 * s for s in result.sparsities]
    for name, accuracies in result.curves.items():
        ax.plot(percent, [100 * a for a in accuracies], marker="o", markersize=3, label=name)
    ax.axhline(
        100 * result.baseline_top1, color="grey", linestyle="--", linewidth=1, label="unpruned"
    )
    ax.set(
        xlabel="sparsity of the layer (%)",
        ylabel="top-1 accuracy (%)",
        title=title or "Pruning sensitivity, one layer at a time",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary's name ends in .tmp, so the format comes from the name asked for
    image_format = path.suffix.removeprefix(".") or "png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=image_format, dpi=120))
    plt.close(fig)
    return path


class SensitivityStage(Stage):
    """Measure each layer pruned alone at each sparsity (validation top-1); the model is left
    as it is and the curves go to the report."""

    method: Literal["sensitivity"]
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES

    def apply(self, model, ctx):
        loader = ctx.data.loader("val" if ctx.data.has("val") else "test", 256)
        result = sensitivity_analysis(
            model, loader, layers=self.layers, sparsities=self.sparsities, progress=ctx.progress
        )
        ctx.notes["sensitivity"] = asdict(result)
        return model

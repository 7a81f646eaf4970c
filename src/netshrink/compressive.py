"""Layer-wise compressive training (Grimaldi, Tenace & Calimera, "Layer-Wise Compressive Training
for Convolutional Neural Networks", Future Internet 2019, 11(1), 7).

The paper's flow, as far as its text could be read here: a trained model (step 0) is pruned by
magnitude to one global sparsity, which leaves each layer its own sparsity (step 1); layers are
sorted by that intra-layer sparsity, the sparser the less significant (step 2); then, greedily,
the less significant layers are trained with a modified SGD that collapses them into a
constrained subspace, while the accuracy stays within a budget (step 3, "<1%" in the paper).

The constraint itself is defined in the paper's section "sigma-Constrained Stochastic Gradient
Descent", whose text could not be found (the copies available here hold its heading but not its
body). So this module uses the issue's fallback and says so: projected SGD, where after every
optimizer step each constrained layer's weight is replaced by its Euclidean projection onto one
of three sets, chosen by `constraint`:

- `SparseSupport(sparsity)` (default): at most (1 - sparsity) * n non-zeros; the projection keeps
  the largest magnitudes (iterative hard thresholding). The support may move while training, so
  weights pruned in step 1 can come back if they grow;
- `Levels(count)`: every weight in {0} + `count` values, fixed when the layer joins by k-means on
  its non-zero weights (Han et al. 2016's linear start); the projection rounds to the nearest;
- `LowRank(rank_fraction)`: the (out, in * kh * kw) matrix at rank ceil(fraction * min side);
  the projection is the truncated SVD (Eckart-Young).

The greedy rule chosen: layers join in ranking order (`ranking`: the paper's "sparsity", or
"size", or "sensitivity" from netshrink.prune.sensitivity); after each joins, `layer_fit` trains
the whole model with every constrained layer projected after every step; if validation top-1
then lies more than `budget` points below the model as given, that layer is reverted (the
weights from before it joined come back) and the search stops: the next layers are more
significant still. Sparse support is the default because the compression rate it reaches can be
set against one-shot global pruning at the same rate, the comparison the paper draws.
"""

import math
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from .budget import Points
from .config import Settings, takes_mappings
from .data import DataSplits
from .errors import UnsupportedLayerError
from .layers import LayerFilter, select_layers
from .loaders import LoaderSplits, as_data
from .mask import Mask, apply_mask, get_mask, unparametrize
from .prune.magnitude import GlobalSparsity, PruneMagnitudeConfig, prune_magnitude, sparsity_keep
from .prune.sensitivity import sensitivity_analysis
from .share.codebooks import restore_codebook
from .share.kmeans import kmeans_1d
from .stage import Stage
from .train import FitConfig, evaluate, fit

FLOAT_BITS = 32


class SparseSupport(Settings):
    """At most (1 - sparsity) of the layer's weights non-zero."""

    kind: Literal["sparse"] = "sparse"
    sparsity: float = Field(0.95, gt=0, lt=1)


class Levels(Settings):
    """Every weight is zero or one of `count` values."""

    kind: Literal["levels"] = "levels"
    count: int = Field(4, ge=1, le=256)


class LowRank(Settings):
    """The weight matrix at rank ceil(rank_fraction * min(out, in * kh * kw))."""

    kind: Literal["low_rank"] = "low_rank"
    rank_fraction: float = Field(0.25, gt=0, le=1)


Constraint = Annotated[SparseSupport | Levels | LowRank, Field(discriminator="kind")]


class CompressiveConfig(Settings):
    """Step 1 prunes to `global_sparsity` and retrains with `prune_fit`; step 3 constrains layers
    in `ranking` order, training with `layer_fit` after each joins, while validation top-1 stays
    within `budget` points of the model as given."""

    global_sparsity: float = Field(0.8, ge=0, lt=1)
    budget: Points = 1.0
    constraint: Constraint = SparseSupport()
    ranking: Literal["sparsity", "size", "sensitivity"] = "sparsity"
    prune_fit: FitConfig = FitConfig(epochs=1, lr=0.01)
    layer_fit: FitConfig = FitConfig(epochs=1, lr=0.01)


def project_sparse(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """`weight` with all but its largest-magnitude (1 - sparsity) share set to zero."""
    return weight * sparsity_keep(weight, sparsity)


def project_levels(weight: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Each weight replaced by the nearest of the sorted `levels` (a tie goes to the lower)."""
    midpoints = (levels[1:] + levels[:-1]) / 2
    return levels[torch.searchsorted(midpoints, weight.contiguous(), side="left")]


def project_low_rank(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The nearest matrix of rank `rank` to `weight` seen as (out, rest): its truncated SVD."""
    u, s, vh = torch.linalg.svd(weight.flatten(1), full_matrices=False)
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).view_as(weight)


@dataclass(frozen=True)
class LayerSet:
    """The set one constrained layer's weight must stay in: `constraint`, with its levels (Levels)
    or its rank (LowRank) fixed when the layer joined."""

    constraint: SparseSupport | Levels | LowRank
    levels: torch.Tensor | None = None
    rank: int | None = None

    @classmethod
    def for_weight(cls, weight: torch.Tensor, constraint) -> "LayerSet":
        if isinstance(constraint, Levels):
            values = weight.detach()[weight.detach() != 0].double()
            found = kmeans_1d(values, constraint.count).centroids if values.numel() else []
            levels = torch.tensor(sorted({0.0, *map(float, found)}), dtype=weight.dtype)
            return cls(constraint, levels=levels)
        if isinstance(constraint, LowRank):
            side = min(weight.shape[0], weight[0].numel())
            return cls(constraint, rank=max(1, math.ceil(constraint.rank_fraction * side)))
        return cls(constraint)

    def project(self, weight: torch.Tensor) -> torch.Tensor:
        if self.levels is not None:
            return project_levels(weight, self.levels)
        if self.rank is not None:
            return project_low_rank(weight, self.rank)
        return project_sparse(weight, self.constraint.sparsity)

    def contains(self, weight: torch.Tensor) -> bool:
        """Whether `weight` lies in the set (exactly; the rank up to float rounding)."""
        if self.levels is not None:
            return bool(torch.isin(weight, self.levels).all())
        if self.rank is not None:
            return int(torch.linalg.matrix_rank(weight.detach().flatten(1))) <= self.rank
        allowed = weight.numel() - round(self.constraint.sparsity * weight.numel())
        return int(torch.count_nonzero(weight)) <= allowed

    def bits(self, weight: torch.Tensor) -> int:
        """Bits to store the weight in this set (sparse positions not counted, as for pruning)."""
        if self.levels is not None:
            values = max(len(self.levels) - 1, 1)  # zeros are not stored: only the others index
            index = max(1, math.ceil(math.log2(values)))
            return int(torch.count_nonzero(weight)) * index + len(self.levels) * FLOAT_BITS
        if self.rank is not None:
            return self.rank * (weight.shape[0] + weight[0].numel()) * FLOAT_BITS
        return int(torch.count_nonzero(weight)) * FLOAT_BITS


class Projector:
    """Projected SGD as a step hook: after every optimizer step, each constrained layer's weight
    is put back in its set (`fit(..., step_hooks=[projector])`). A constrained layer's pruning
    mask is opened while it trains, so that the projection alone decides its zeros; `finish`
    closes the masks on the zeros the projections left."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sets: dict[str, LayerSet] = {}

    def add(self, name: str, constraint) -> LayerSet:
        module = self.model.get_submodule(name)
        dense = _dense_weight(module, name)
        mask = get_mask(module)
        with torch.no_grad():
            if mask is not None:
                dense.mul_(mask.mask)  # its pruned weights start at zero, then may come back
                mask.mask.fill_(1)
        self.sets[name] = LayerSet.for_weight(module.weight, constraint)
        self.project()
        return self.sets[name]

    def remove(self, name: str) -> None:
        del self.sets[name]

    def __call__(self, step: int) -> None:
        self.project()

    @torch.no_grad()
    def project(self) -> None:
        for name, target in self.sets.items():
            module = self.model.get_submodule(name)
            dense = _dense_weight(module, name)
            dense.copy_(target.project(dense))

    def contains(self) -> dict[str, bool]:
        """For each constrained layer, whether its weight lies in its set now."""
        return {n: s.contains(self.model.get_submodule(n).weight) for n, s in self.sets.items()}

    def finish(self) -> None:
        """Close each constrained layer's mask on its zeros (a sparse model is a masked one); a
        layer on a few levels becomes a scalar codebook over them, so that its size is counted
        (and fine-tuning goes on) as for weight sharing."""
        for name, target in self.sets.items():
            module = self.model.get_submodule(name)
            with torch.no_grad():
                if target.levels is None:
                    apply_mask(module, "weight", module.weight != 0)
                    continue
                if parametrize.is_parametrized(module, "weight"):
                    unparametrize(module, "weight")
                restore_codebook(module)  # its distinct non-zeros are the levels


def _dense_weight(module: nn.Module, name: str) -> torch.Tensor:
    """The trained tensor under a layer's weight: itself, or the original under a pruning mask."""
    if not parametrize.is_parametrized(module, "weight"):
        return module.weight
    chain = module.parametrizations.weight
    if any(not isinstance(p, Mask) for p in chain):
        raise UnsupportedLayerError(
            f"layer {name} is shared or fixed point: run compressive training on the float "
            "model (pruned or not) and share or quantize afterwards"
        )
    return chain.original


@dataclass(frozen=True)
class LayerStep:
    """One step of the greedy search: the layer that joined, validation top-1 after training
    with it constrained, and whether that stayed within the budget (if not, it was reverted)."""

    layer: str
    top1: float
    accepted: bool


@dataclass(frozen=True)
class CompressiveResult:
    """What `train_compressive` did. Accuracies are validation top-1; `compression_rate` is the
    fp32 bits of the chosen layers' weights over the bits they need now (`LayerSet.bits`;
    unconstrained layers: their non-zeros at 32 bits)."""

    order: tuple[str, ...]
    constrained: dict[str, LayerSet]
    sparsity: dict[str, float]
    compression_rate: float
    reference_top1: float
    pruned_top1: float
    top1: float
    steps: tuple[LayerStep, ...]
    epochs: int


@takes_mappings
def train_compressive(
    model: nn.Module,
    data: DataSplits | LoaderSplits,
    config: CompressiveConfig,
    *,
    layers: LayerFilter = None,
    progress: bool = True,
) -> CompressiveResult:
    """Grimaldi et al.'s layer-wise compressive training on `model` (in place): global magnitude
    pruning, layers ranked by significance, then projected SGD on a growing set of the least
    significant layers while validation top-1 stays within `config.budget` points. See the module
    docstring for the constraint and the greedy rule.

    Example:
        >>> result = train_compressive(model, data, CompressiveConfig(global_sparsity=0.8))
        >>> result.constrained.keys(), result.compression_rate
    """
    data = as_data(data)
    val = data.loader("val" if data.has("val") else "test", 512)
    names = [n for n, _ in select_layers(model, layers)]
    reference = evaluate(model, val).top1
    order = _ranking(model, names, config, val, progress)  # sensitivity: before pruning
    prune_magnitude(
        model,
        PruneMagnitudeConfig(threshold=GlobalSparsity(sparsity=config.global_sparsity)),
        layers=names,
    )
    if config.prune_fit.epochs:
        fit(model, data, config.prune_fit, progress=progress)
    pruned = evaluate(model, val).top1
    if config.ranking == "sparsity":  # the paper's rule: the sparser, the less significant
        order = sorted(names, key=lambda n: -_zeros(model.get_submodule(n).weight))
    projector, steps, top1 = Projector(model), [], pruned
    for name in order:
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        projector.add(name, config.constraint)
        fit(model, data, config.layer_fit, step_hooks=[projector], progress=progress)
        trial = evaluate(model, val).top1
        steps.append(LayerStep(name, trial, reference - trial <= config.budget / 100))
        if not steps[-1].accepted:
            projector.remove(name)
            model.load_state_dict(before)
            break
        top1 = trial
    projector.finish()
    epochs = config.prune_fit.epochs + len(steps) * config.layer_fit.epochs
    return CompressiveResult(
        order=tuple(order),
        constrained=dict(projector.sets),
        sparsity={n: _zeros(model.get_submodule(n).weight) for n in names},
        compression_rate=compression_rate(model, names, projector.sets),
        reference_top1=reference,
        pruned_top1=pruned,
        top1=top1,
        steps=tuple(steps),
        epochs=epochs,
    )


def compression_rate(model: nn.Module, names: list[str], sets: dict[str, LayerSet]) -> float:
    """fp32 bits of the named layers' weights over the bits they need as they are now."""
    dense = needed = 0
    for name in names:
        weight = model.get_submodule(name).weight.detach()
        dense += weight.numel() * FLOAT_BITS
        target = sets.get(name)
        needed += target.bits(weight) if target else int(torch.count_nonzero(weight)) * FLOAT_BITS
    return dense / max(needed, 1)


def _ranking(model, names, config: CompressiveConfig, val, progress) -> list[str]:
    """Least significant first. "size": the largest layers first; "sensitivity": the layers whose
    accuracy suffers least when pruned alone (mean over 50-90% sparsity) first."""
    if config.ranking == "size":
        return sorted(names, key=lambda n: -model.get_submodule(n).weight.numel())
    if config.ranking == "sensitivity":
        curves = sensitivity_analysis(
            model, val, layers=names, sparsities=(0.5, 0.7, 0.9), progress=progress
        ).curves
        return sorted(names, key=lambda n: -sum(curves[n]))
    return list(names)


def _zeros(weight: torch.Tensor) -> float:
    return 1 - int(torch.count_nonzero(weight)) / weight.numel()


class CompressiveStage(Stage):
    """Layer-wise compressive training within its budget (Grimaldi et al. 2019)."""

    method: Literal["compressive"]
    config: CompressiveConfig = CompressiveConfig()

    def apply(self, model, ctx):
        result = train_compressive(
            model, ctx.data, self.config, layers=self.layers, progress=ctx.progress
        )
        ctx.notes["compressive"] = search_notes(result)
        return model


def search_notes(result: CompressiveResult) -> dict:
    """The greedy search as plain data for the run's record and the CLI's table: validation
    top-1 as given and after pruning, then each layer that joined, its sparsity, top-1, kept."""
    return {
        "reference_top1": result.reference_top1,
        "pruned_top1": result.pruned_top1,
        "steps": [
            {**asdict(step), "sparsity": result.sparsity[step.layer]} for step in result.steps
        ],
    }

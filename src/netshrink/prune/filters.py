"""Filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): remove whole output
channels of convolutions (and, optionally, hidden Linear neurons) physically, so the model
becomes a smaller dense model with fewer MACs, following every dependency the channel graph
finds: BatchNorm, flatten -> Linear, residual adds and depthwise convolutions.

Planning (`plan_filters`) scores each channel space and picks the channels to keep without
touching the model; `prune_filters` applies the plan as structural edits (netshrink.edits), which
are recorded on the model so a checkpoint can replay them. `mask_filters` zeroes the same
channels instead, giving the equivalent masked model for comparison.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import model_validator
from torch import nn

from netshrink.config import Settings, takes_mappings
from netshrink.edits import KeepChannels
from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.layers import LayerFilter, copy_model, select_layers, unwrap
from netshrink.mask import bake_masks, restore_masks
from netshrink.measure import count_macs
from netshrink.prune.channel_graph import (
    ChannelGraph,
    ChannelSpace,
    Consumer,
    analyze_channels,
)
from netshrink.prune.surgery import cut_channels
from netshrink.stage import Stage


class PruneFiltersConfig(Settings):
    """How much to prune and how to choose (Li et al. 2017).

    amount: fraction of the channels removed from each selected space (0 <= amount < 1); or
    target_macs: fraction of the model's MACs to remove, found by bisection on a uniform amount.
    criterion: "l1" (Li et al.'s filter L1 norm), "l2", or "bn_scale" (|gamma| of the BatchNorm
    right after the producer). residual: "group" prunes a residual group's producers together
    (scores summed), "skip" leaves groups whole. per_layer: amount for the space of the named
    producer. include_linear: also prune hidden Linear neurons; None (the default) does so only
    in a model without convolutions, whose hidden neurons are the only channels it has (an MLP).
    """

    amount: float | None = None
    target_macs: float | None = None
    criterion: Literal["l1", "l2", "bn_scale"] = "l1"
    residual: Literal["group", "skip"] = "group"
    per_layer: dict[str, float] = {}
    min_channels: int = 1
    include_linear: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> "PruneFiltersConfig":
        if (self.amount is None) == (self.target_macs is None):
            raise ConfigError(
                "prune_filters: give exactly one of amount (the fraction of channels"
                " to remove) and target_macs (the fraction of MACs to remove)"
            )
        fractions = {
            "amount": self.amount,
            **{f"per_layer[{k!r}]": v for k, v in self.per_layer.items()},
        }
        for field, value in fractions.items():
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"prune_filters: {field}={value} must be in [0, 1)")
        if self.target_macs is not None and not 0 < self.target_macs < 1:
            raise ConfigError(f"prune_filters: target_macs={self.target_macs} must be in (0, 1)")
        if self.min_channels < 1:
            raise ConfigError(f"prune_filters: min_channels={self.min_channels} must be >= 1")
        return self


@dataclass(frozen=True)
class SpacePlan:
    """One channel space to cut: its producers keep the output channels `keep` (sorted) of
    `channels`, and every consumer is sliced to match."""

    producers: tuple[str, ...]
    channels: int
    keep: tuple[int, ...]
    consumers: tuple[Consumer, ...]

    def edits(self) -> list[KeepChannels]:
        edits = [KeepChannels(module=p, dim="out", keep=self.keep) for p in self.producers]
        for c in self.consumers:
            # After a flatten, channel i owns the features [i*factor, (i+1)*factor).
            keep = tuple(i * c.factor + j for i in self.keep for j in range(c.factor))
            edits.append(KeepChannels(module=c.module, dim=c.dim, keep=keep))
        return edits


@dataclass(frozen=True)
class FilterPlan:
    """What `prune_filters` will do: the spaces it cuts, and the selected producers it leaves
    whole (`skipped`: producer -> why)."""

    spaces: tuple[SpacePlan, ...]
    skipped: dict[str, str]

    def edits(self) -> list[KeepChannels]:
        """The structural edits for every producer and consumer, ready for `cut_channels`."""
        return [edit for space in self.spaces for edit in space.edits()]


@dataclass(frozen=True)
class _Ranked:
    space: ChannelSpace
    order: list[int]  # channel indices, most important first
    amount: float | None  # from per_layer, else the uniform amount


def plan_filters(
    model: nn.Module,
    config: PruneFiltersConfig,
    input_shape: tuple[int, ...],
    *,
    layers: LayerFilter = None,
) -> FilterPlan:
    """Choose the filters to remove (Li et al. 2017) without changing the model.

    Args:
        model: the model (a DDP / DataParallel wrapper is looked through).
        config: how much and by which criterion.
        input_shape: one input without the batch dimension, e.g. (3, 32, 32).
        layers: the producers to prune: None (every Conv2d, and Linear with include_linear, whose
            channels can be followed; the rest are skipped), names, or a predicate
            `(name, module) -> bool`. A selected layer whose channels are locked raises.

    Returns:
        A FilterPlan; `plan.edits()` are the structural edits.

    Example:
        >>> plan = plan_filters(resnet20(), PruneFiltersConfig(amount=0.3), (3, 32, 32))
        >>> len(plan.spaces[0].keep), plan.spaces[0].channels
        (11, 16)
    """
    model = unwrap(model)
    graph = analyze_channels(model, input_shape)
    chosen = _choose(model, graph, config, layers)
    ranked, skipped = [], {}
    for space in graph.spaces:
        selected = [p for p in space.producers if p in chosen]
        if not selected:
            continue
        explicit = layers is not None or any(p in config.per_layer for p in selected)
        reason = _why_whole(space, selected, config, explicit)
        if reason:
            skipped.update(dict.fromkeys(selected, reason))
            continue
        ranked.append(
            _Ranked(
                space, _order(model, graph, space, config.criterion), _fixed_amount(space, config)
            )
        )
    if not ranked:
        why = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise ConfigError(
            "prune_filters: no selected layer can lose channels "
            + (
                f"({why})"
                if why
                else "(no convolution, and include_linear=False leaves the Linear layers whole)"
            )
        )
    if config.amount is not None:
        return _plan_at(ranked, config.amount, config.min_channels, skipped)
    return _search_macs(model, input_shape, ranked, config, skipped)


@takes_mappings
def prune_filters(
    model: nn.Module,
    config: PruneFiltersConfig,
    input_shape: tuple[int, ...],
    *,
    layers: LayerFilter = None,
) -> nn.Module:
    """Filter pruning of Li et al. 2017: plan (`plan_filters`), then remove the channels
    physically with `cut_channels` (netshrink.prune.surgery), which records the edits on the model. Everything is checked
    before the first layer changes, so a failing call leaves the model as it was. Build the
    optimizer (and any DDP wrapper) after this call: the pruned layers hold new tensors.

    Example:
        >>> model = prune_filters(vgg_small(), PruneFiltersConfig(target_macs=0.5), (1, 28, 28))
    """
    plan = plan_filters(model, config, input_shape, layers=layers)
    cut_channels(model, plan.edits())
    return model


def mask_filters(model: nn.Module, plan: FilterPlan) -> nn.Module:
    """The masked twin of `prune_filters` (for comparison): zero the removed channels' weight
    rows and biases in the producers, the weight and bias of every BatchNorm and depthwise conv
    in the space, and the weights through which every consumer reads them. The last makes the
    twin exact where an op between gives a removed channel a value (x + c, sigmoid(0) = 0.5,
    a BatchNorm with affine=False): what prune_filters removes, the twin ignores."""
    root = unwrap(model)
    with torch.no_grad():
        for space in plan.spaces:
            drop = sorted(set(range(space.channels)) - set(space.keep))
            sliced = [c.module for c in space.consumers if c.dim != "in"]
            for name in (*space.producers, *sliced):
                module = root.get_submodule(name)
                for tensor in (module.weight, module.bias):
                    if tensor is not None:
                        tensor[drop] = 0
            for consumer in (c for c in space.consumers if c.dim == "in"):
                # after a flatten, channel i owns the features [i*factor, (i+1)*factor)
                features = [i * consumer.factor + j for i in drop for j in range(consumer.factor)]
                root.get_submodule(consumer.module).weight[:, features] = 0
    return model


def _choose(
    model: nn.Module, graph: ChannelGraph, config: PruneFiltersConfig, layers: LayerFilter
) -> set[str]:
    modules = dict(model.named_modules())
    producers = [p for s in graph.spaces for p in s.producers]
    include_linear = config.include_linear
    if include_linear is None:  # an MLP's neurons are its filters
        include_linear = not any(isinstance(modules[p], nn.Conv2d) for p in producers)
    kinds = (nn.Conv2d, nn.Linear) if include_linear else (nn.Conv2d,)
    candidates = [p for p in producers if isinstance(modules[p], kinds)]
    if layers is None:
        chosen = set(candidates)
    elif callable(layers):
        chosen = {name for name in candidates if layers(name, modules[name])}
    else:
        chosen = {layers} if isinstance(layers, str) else set(layers)
        unknown = sorted(chosen - set(candidates))
        if unknown:
            raise ConfigError(
                f"prune_filters: layers= names {unknown}, which are not convolutions (or Linear "
                "layers, with include_linear=True) producing channels in the forward pass; "
                "depthwise convs and BatchNorms follow the layer before them. Producers: "
                f"{', '.join(candidates)}"
            )
    stray = sorted(set(config.per_layer) - chosen)
    if stray:
        raise ConfigError(
            f"prune_filters: per_layer names {stray}, which are not selected "
            "producers; name layers that layers= selects"
        )
    return chosen


def _why_whole(
    space: ChannelSpace, selected: list[str], config: PruneFiltersConfig, explicit: bool
) -> str | None:
    """Why this space stays whole (None: prune it); raises when the user asked for it by name."""
    if space.locked_by:
        if explicit:
            raise UnsupportedLayerError(
                f"cannot prune the filters of {selected[0]}: its channels are locked by "
                f"{space.locked_by[0]}, whose channels filter pruning cannot follow; exclude it "
                f"with layers= (e.g. layers=lambda name, m: name != {selected[0]!r})"
            )
        return f"locked by {space.locked_by[0]}"
    if len(space.producers) > 1:
        if config.residual == "skip":
            return "residual group (residual='skip')"
        missing = [p for p in space.producers if p not in selected]
        if missing and explicit:
            raise ConfigError(
                f"prune_filters: {selected} share their output channels with {missing} through "
                "residual adds; select all of them, or use residual='skip'"
            )
        if missing:
            return f"residual group with unselected producers {missing}"
    return None


def _order(model: nn.Module, graph: ChannelGraph, space: ChannelSpace, criterion: str) -> list[int]:
    scores = sum(_scores(model, graph, p, criterion) for p in space.producers)
    return torch.argsort(scores, descending=True, stable=True).tolist()


def _scores(model: nn.Module, graph: ChannelGraph, producer: str, criterion: str) -> torch.Tensor:
    if criterion == "bn_scale":
        norm = graph.bn_after.get(producer)
        gamma = model.get_submodule(norm).weight if norm else None
        if gamma is None:
            raise ConfigError(
                f"criterion='bn_scale' scores {producer} by |gamma| of the BatchNorm right after "
                f"it, but {producer} has none with affine parameters; use criterion='l1' or "
                "exclude it with layers="
            )
        return gamma.detach().abs().float()
    weight = model.get_submodule(producer).weight.detach().flatten(1).float()
    return weight.abs().sum(1) if criterion == "l1" else weight.norm(dim=1)


def _fixed_amount(space: ChannelSpace, config: PruneFiltersConfig) -> float | None:
    amounts = {config.per_layer[p] for p in space.producers if p in config.per_layer}
    if len(amounts) > 1:
        raise ConfigError(
            f"prune_filters: per_layer gives different amounts to producers of one"
            f" residual group ({space.producers}); give them one amount"
        )
    return amounts.pop() if amounts else None


def _plan_at(
    ranked: list[_Ranked], amount: float, min_channels: int, skipped: dict[str, str]
) -> FilterPlan:
    spaces = []
    for r in ranked:
        size = r.space.size
        removed = math.floor((r.amount if r.amount is not None else amount) * size + 0.5)
        count = min(size, max(min_channels, size - removed))
        if count < size:
            spaces.append(
                SpacePlan(
                    tuple(r.space.producers),
                    size,
                    tuple(sorted(r.order[:count])),
                    tuple(r.space.consumers),
                )
            )
    return FilterPlan(tuple(spaces), dict(skipped))


def _search_macs(
    model: nn.Module,
    input_shape,
    ranked: list[_Ranked],
    config: PruneFiltersConfig,
    skipped: dict[str, str],
) -> FilterPlan:
    """The smallest uniform amount whose plan removes at least `target_macs` of the MACs:
    bisection, since removing more channels never adds MACs."""
    base = _macs(model, input_shape)

    def saved(plan: FilterPlan) -> float:
        pruned = copy_model(model)
        cut_channels(pruned, plan.edits())
        return 1 - _macs(pruned, input_shape) / base

    low, high = 0.0, 1 - 1e-9
    best = _plan_at(ranked, high, config.min_channels, skipped)
    most = saved(best)
    if most < config.target_macs:
        raise ConfigError(
            f"prune_filters: target_macs={config.target_macs} is out of reach: cutting every "
            f"selected layer to min_channels={config.min_channels} saves {most:.1%} of the MACs;"
            " select more layers (layers=, include_linear=True) or lower target_macs"
        )
    # Stop well below the step of 1/size at which the largest space's keep count changes.
    while high - low > 1 / (8 * max(r.space.size for r in ranked)):
        middle = (low + high) / 2
        plan = _plan_at(ranked, middle, config.min_channels, skipped)
        if saved(plan) >= config.target_macs:
            high, best = middle, plan
        else:
            low = middle
    return best


def _macs(model: nn.Module, input_shape) -> int:
    return sum(row.macs for row in count_macs(model, tuple(input_shape)))


class PruneFiltersStage(Stage):
    """Remove whole filters (Li et al. 2017), residual blocks kept consistent."""

    method: Literal["prune_filters"]
    config: PruneFiltersConfig

    def apply(self, model, ctx):
        bake_masks(model)  # surgery edits plain tensors; earlier zeros are masked again below
        prune_filters(model, self.config, ctx.data.input_shape, layers=self.layers)
        restore_masks(model, select_layers(model, scales=True))
        return model

"""Magnitude pruning: a weight goes when its magnitude is under a threshold.

Three ways to set the threshold, each a small config type:

- `StdThreshold(ratio)`: per layer, `|w| < ratio * std(W)` (Han et al. 2015; Kim et al., "the
  standard deviation of each layer multiplied by a pruning ratio"); std is of the dense layer;
- `LayerSparsity(sparsity)`: per layer, the `sparsity` fraction of smallest weights (percentile);
- `GlobalSparsity(sparsity)`: one magnitude threshold across all chosen layers.

Biases and BatchNorm are not pruned unless asked (`include_bias`, or naming a BatchNorm layer).
"""

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from ..config import Settings, takes_mappings
from ..errors import ConfigError
from ..layers import LayerFilter, select_layers
from ..mask import apply_mask, dense_std
from ..stage import Stage


class StdThreshold(Settings):
    """Prune `|w| < ratio * std(W)`, per layer."""

    kind: Literal["std"] = "std"
    ratio: float = Field(gt=0)


class LayerSparsity(Settings):
    """Prune the `sparsity` fraction of each layer's smallest-magnitude weights."""

    kind: Literal["sparsity"] = "sparsity"
    sparsity: float = Field(ge=0, lt=1)


class GlobalSparsity(Settings):
    """Prune the `sparsity` fraction of the smallest-magnitude weights across all chosen layers."""

    kind: Literal["global"] = "global"
    sparsity: float = Field(ge=0, lt=1)


Threshold = Annotated[StdThreshold | LayerSparsity | GlobalSparsity, Field(discriminator="kind")]


class PruneMagnitudeConfig(Settings):
    """`threshold` for every chosen layer; `per_layer` overrides its ratio or sparsity by name."""

    threshold: Threshold
    per_layer: dict[str, float] = {}
    include_bias: bool = False


def std_keep(weight: torch.Tensor, ratio: float, std: float) -> torch.Tensor:
    """Keep-mask of `|w| >= ratio * std`."""
    return weight.abs() >= ratio * std


def sparsity_keep(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask of the largest-magnitude weights, pruning exactly round(sparsity * n) of them.

    Ties are broken by position, so the count is exact and the result deterministic.
    """
    flat = weight.detach().abs().flatten()
    prune = round(sparsity * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:prune]] = False
    return keep.view_as(weight)


def global_keep(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Keep-masks for `weights` under one magnitude threshold that prunes `sparsity` of them all."""
    joined = sparsity_keep(torch.cat([w.detach().flatten() for w in weights]), sparsity)
    return [k.view_as(w) for k, w in zip(joined.split([w.numel() for w in weights]), weights)]


@takes_mappings
def prune_magnitude(
    model: nn.Module, config: PruneMagnitudeConfig, *, layers: LayerFilter = None
) -> nn.Module:
    """Attach magnitude masks to the chosen layers' weights (and biases if asked); returns model.

    Follows Han et al. 2015 ("Learning both Weights and Connections"). Masks combine with any
    earlier ones, so calling it with a higher threshold prunes further and never revives a weight.
    """
    targets = _targets(model, config, layers)
    unknown = set(config.per_layer) - {name for name, _, _ in targets}
    if unknown:
        raise ConfigError(
            f"per_layer names {', '.join(sorted(unknown))}, which are not among the "
            "layers being pruned"
        )
    threshold = config.threshold
    if isinstance(threshold, GlobalSparsity):
        if config.per_layer:
            raise ConfigError("per_layer overrides do not apply to a global threshold")
        keeps = global_keep([getattr(m, t) for _, m, t in targets], threshold.sparsity)
    else:
        keeps = [_layer_keep(m, t, threshold, config.per_layer.get(n)) for n, m, t in targets]
    with torch.no_grad():
        for (_, module, tensor), keep in zip(targets, keeps):
            apply_mask(module, tensor, keep)
    return model


def _layer_keep(module: nn.Module, tensor: str, threshold, override: float | None):
    weight = getattr(module, tensor)
    if isinstance(threshold, StdThreshold):
        ratio = threshold.ratio if override is None else override
        return std_keep(weight, ratio, dense_std(module, tensor))
    sparsity = threshold.sparsity if override is None else override
    if not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity {sparsity} is not in [0, 1)")
    return sparsity_keep(weight, sparsity)


def _targets(
    model: nn.Module, config: PruneMagnitudeConfig, layers: LayerFilter
) -> list[tuple[str, nn.Module, str]]:
    """(layer name, module, tensor name) of every tensor to prune."""
    chosen = select_layers(model, layers)
    if not chosen:
        raise ConfigError("no layers to prune: the filter matched no convolution or linear layer")
    targets = []
    for name, module in chosen:
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise ConfigError(f"layer {name} ({type(module).__name__}) has no weight to prune")
        targets.append((name, module, "weight"))
        if config.include_bias and getattr(module, "bias", None) is not None:
            targets.append((name, module, "bias"))
    return targets


class PruneMagnitudeStage(Stage):
    """One-shot magnitude pruning (Han et al. 2015's std-scaled threshold, or a sparsity)."""

    method: Literal["prune_magnitude"]
    config: PruneMagnitudeConfig

    def apply(self, model, ctx):
        return prune_magnitude(model, self.config, layers=self.layers)

"""Low-rank factorization by truncated SVD (Denton et al. 2014; Gong et al. 2014, section 3.1).

A Linear (out x in) becomes Linear(in -> r) then Linear(r -> out); a Conv2d becomes a k x k
convolution to r channels then a 1x1 convolution, the factors of the (out, in * kh * kw) matrix.
The pair is an `nn.Sequential` put where the layer was, so `fc1` stays a valid name (its weights
become `fc1.0.weight` and `fc1.1.weight`), and a `FactorLayer` edit is recorded so that a
checkpoint rebuilds the same shapes on a fresh model.
"""

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config import Settings, takes_mappings
from ..edits import FactorLayer, record_edits
from ..errors import UnsupportedLayerError
from ..layers import LayerFilter, unwrap
from ..progress import track
from ..stage import Stage
from .codebooks import chosen_layers, take_weight


class FactorSvdConfig(Settings):
    """Exactly one of: a fixed `rank`; a target `ratio` of each layer's weights to the factors'
    (rank = the largest that reaches it); or the fraction of `energy` (sum of squared singular
    values) kept (rank = the smallest that keeps it)."""

    rank: int | None = Field(None, ge=1)
    ratio: float | None = Field(None, gt=0)
    energy: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_rule(self) -> "FactorSvdConfig":
        if sum(v is not None for v in (self.rank, self.ratio, self.energy)) != 1:
            raise ValueError("give exactly one of rank, ratio or energy")
        return self


def check_factorable(module: nn.Module) -> None:
    """Raise UnsupportedLayerError unless `module` is a Linear or an ungrouped Conv2d."""
    if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
        return
    grouped = " with groups > 1" if isinstance(module, nn.Conv2d) else ""
    raise UnsupportedLayerError(
        f"a {type(module).__name__}{grouped} cannot be factored: SVD takes Linear layers and "
        "ungrouped Conv2d layers; leave it out of the layer list"
    )


def factored_layers(module: nn.Module, rank: int) -> nn.Sequential:
    """The untrained pair of layers that factor `module` at `rank` (shapes only)."""
    check_factorable(module)
    kwargs = {"device": module.weight.device, "dtype": module.weight.dtype}
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return nn.Sequential(
            nn.Linear(module.in_features, rank, bias=False, **kwargs),
            nn.Linear(rank, module.out_features, bias=bias, **kwargs),
        )
    first = nn.Conv2d(
        module.in_channels,
        rank,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        bias=False,
        padding_mode=module.padding_mode,
        **kwargs,
    )
    return nn.Sequential(first, nn.Conv2d(rank, module.out_channels, 1, bias=bias, **kwargs))


def choose_rank(singular: torch.Tensor, shape: tuple[int, int], config: FactorSvdConfig) -> int:
    """The rank for a (rows x cols) matrix with `singular` values, by `config`'s rule."""
    rows, cols = shape
    if config.rank is not None:
        rank = config.rank
    elif config.ratio is not None:
        rank = math.floor(rows * cols / (config.ratio * (rows + cols)))
    else:
        energy = singular.double().pow(2).cumsum(0)
        kept = energy / energy[-1].clamp(min=torch.finfo(torch.float64).tiny)
        rank = int(torch.searchsorted(kept, torch.tensor(config.energy, dtype=kept.dtype))) + 1
    return max(1, min(rank, len(singular)))


@takes_mappings
def factor_svd(
    model: nn.Module, config: FactorSvdConfig, *, layers: LayerFilter = None, progress: bool = True
) -> nn.Module:
    """Replace each chosen layer by its truncated-SVD factors; returns model.

    Follows Denton et al. 2014 and Gong et al. 2014: W = U S V^T, the first layer gets
    sqrt(S) V^T and the second U sqrt(S) (balanced factors train better than U, S V^T), the
    bias stays on the second. At full rank the outputs are unchanged. Pruning masks are baked
    first (the factors are dense). Records a `FactorLayer` edit per layer.
    """
    root = unwrap(model)
    chosen = chosen_layers(root, layers, what="factor")
    edits = []
    for name, module in track(chosen, "SVD", enabled=progress):
        try:
            check_factorable(module)
        except UnsupportedLayerError as exc:
            raise UnsupportedLayerError(f"layer {name}: {exc}") from None
        weight, _ = take_weight(module, name)
        matrix = weight.reshape(weight.shape[0], -1).double()
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        rank = choose_rank(s, tuple(matrix.shape), config)
        pair = factored_layers(module, rank)
        root_s = s[:rank].sqrt()
        with torch.no_grad():
            pair[0].weight.copy_((root_s[:, None] * vh[:rank]).reshape(pair[0].weight.shape))
            pair[1].weight.copy_((u[:, :rank] * root_s).reshape(pair[1].weight.shape))
            if module.bias is not None:
                pair[1].bias.copy_(module.bias)
        root.set_submodule(name, pair)
        edits.append(FactorLayer(module=name, rank=rank))
    record_edits(root, edits)
    return model


class FactorSvdStage(Stage):
    """Low-rank factorization by truncated SVD (Gong et al. 2014's baseline)."""

    method: Literal["factor_svd"]
    config: FactorSvdConfig

    def apply(self, model, ctx):
        return factor_svd(model, self.config, layers=self.layers, progress=ctx.progress)

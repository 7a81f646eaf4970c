"""Weight-sharing parametrizations: a weight rebuilt from a small trainable codebook and fixed
indices, times the pruning mask it carries (DESIGN.md, "compression as parametrizations").

- `ScalarCodebook`: `weight = centroids[indices] * mask` (Han et al. 2016, k-means sharing);
- `VectorCodebook`: the sum of product-quantized stages (Gong et al. 2014, PQ and RQ);
- `SignCodebook`: `weight = scale * sign * mask`, one scale per layer or output channel, signs in
  {-1, +1} or, ternary, {-1, 0, +1} (Gong et al. 2014, binarization).

The codebook is the only trainable tensor: `attach` freezes the dense `original` underneath, so
the ordinary `fit` updates each shared value while indices and zeros stay fixed. Each value moves
by the mean of its kept members' gradients, not their sum (netshrink.share.gather says why), so
a codebook fine-tunes at the rate free weights would. What a shared layer stores is what its
.nsk file holds for the weight it computes: netshrink.codec.summary says (`summarize_model`).
"""

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, UnsupportedLayerError
from ..fold import fold_batchnorm
from ..layers import LayerFilter, select_layers
from ..mask import Mask, unparametrize
from ..stage import Stage
from .gather import gather_rows, mean_over_members, row_sums, trains
from .vq import Axis, decode_tensors, segments


class CodebookStage(Stage):
    """The base of the sharing stages: fine-tuning trains codebooks. `fold_batchnorm` folds
    batch norm into the layers before sharing them (netshrink.fold), so that the codebooks hold
    the weights a device multiplies with, and a fixed-point stage later, which folds batch norm
    itself, has nothing left to fold into shared weights (it would scale each channel's shared
    values apart). Unset, it folds when a later stage of the same run folds batch norm
    (`netshrink.methods.plan_stages`).

    A codebook entry steps by its members' mean gradient, as far as a free weight would, so it
    fine-tunes at the rate every stage does (the baseline's / 10). On a pruned model the rate
    hardly matters: `python bench/sweep.py deep-compression-lenet5 --stage share --field
    finetune.lr --values null 0.001 0.02 0.05` (validation, 3 seeds) ended the LeNet-5 recipe's
    sharing 0.80-0.85 pt below the baseline at every rate from 0.001 to 0.05 (the default 0.005:
    0.85). Unpruned and at 2 bits a higher rate helps (`bench/centroid_step.py`, LeNet-300-100:
    88.53% at 0.005, 89.32% at 0.05): set `finetune.lr` there.
    """

    fold_batchnorm: bool | None = None

    def apply(self, model, ctx):
        if self.fold_batchnorm:
            fold_batchnorm(model)
        return self.share(model, ctx)

    def share(self, model: nn.Module, ctx) -> nn.Module:
        """Run the sharing method on `model`."""
        raise NotImplementedError


class ScalarCodebook(nn.Module):
    """`weight = centroids[indices] * mask`: k shared values, a log2(k)-bit index per weight."""

    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("indices", indices)
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        centroids = self.centroids
        if trains(centroids):
            centroids = mean_over_members(centroids, self.members())
        return gather_rows(centroids, self.indices) * self.mask

    def members(self) -> torch.Tensor:
        """For each centroid, the kept weights that take its value (centroids' shape)."""
        counts = row_sums(self.indices.reshape(-1), self.mask.reshape(-1, 1), len(self.centroids))
        return counts.reshape(self.centroids.shape)


class VectorCodebook(nn.Module):
    """The weight viewed as a matrix (out, rest), rebuilt from `codebooks` (stages, segments, k,
    segment) and `indices` (stages, segments, vectors) along `axis`, times `mask`."""

    def __init__(
        self, codebooks: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, axis: Axis
    ) -> None:
        super().__init__()
        self.codebooks = nn.Parameter(codebooks)
        self.register_buffer("indices", indices)
        self.register_buffer("mask", mask)
        self.axis = axis

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        shape = (self.mask.shape[0], self.mask[0].numel())
        codebooks = self.codebooks
        if trains(codebooks):
            codebooks = mean_over_members(codebooks, self.members(shape))
        matrix = decode_tensors(codebooks, self.indices, self.axis, shape)
        return matrix.reshape(self.mask.shape) * self.mask

    def members(self, shape: tuple[int, int]) -> torch.Tensor:
        """For each codeword entry, the kept weights it is decoded into (codebooks' shape)."""
        _, parts, k, length = self.codebooks.shape
        kept = segments(self.mask.reshape(shape), length, self.axis).reshape(-1, length)
        offsets = torch.arange(parts, device=kept.device).unsqueeze(1) * k
        counts = [row_sums((i + offsets).reshape(-1), kept, parts * k) for i in self.indices]
        return torch.stack(counts).reshape(self.codebooks.shape)


class SignCodebook(nn.Module):
    """`weight = scales * signs * mask`, `scales` one per layer (shape (1,)) or per output
    channel; `signs` in {-1, +1}, or {-1, 0, +1} when `ternary`."""

    def __init__(
        self, scales: torch.Tensor, signs: torch.Tensor, mask: torch.Tensor, ternary: bool
    ) -> None:
        super().__init__()
        self.scales = nn.Parameter(scales)
        self.register_buffer("signs", signs)
        self.register_buffer("mask", mask)
        self.ternary = ternary

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.signs.dim() - 1)
        scales = self.scales
        if trains(scales):
            scales = mean_over_members(scales, self.members())
        return scales.reshape(shape) * self.signs * self.mask

    def members(self) -> torch.Tensor:
        """For each scale, the kept weights it multiplies (a ternary zero is none)."""
        kept = (self.signs != 0) * self.mask
        return kept.reshape(len(self.scales), -1).sum(1)


SHARED = (ScalarCodebook, VectorCodebook, SignCodebook)


def take_weight(
    module: nn.Module, layer: str, name: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, keep) of `module.<name>`, leaving the tensor unparametrized with that value.

    A pruning Mask or an earlier sharing is replaced rather than stacked: its value is baked in
    and its mask returned, so pruned weights stay pruned. A tensor without a mask treats its
    exact zeros as pruned (a checkpoint stores no masks). Other parametrizations (fixed point)
    are refused: share before quantizing.
    """
    keep = None
    if parametrize.is_parametrized(module, name):
        chain = list(module.parametrizations[name])
        others = [type(p).__name__ for p in chain if not isinstance(p, (Mask, *SHARED))]
        if others:
            raise UnsupportedLayerError(
                f"layer {layer}: {name} is parametrized by {', '.join(others)}; share the "
                "weights before quantizing them (quantize keeps shared values on its grid)"
            )
        keep = torch.stack([p.mask.bool() for p in chain]).all(0)
        unparametrize(module, name)
        getattr(module, name).requires_grad_(True)  # a frozen original becomes a plain weight
    value = getattr(module, name).detach().clone()
    if keep is None:
        keep = value != 0
    return value, keep


def attach(module: nn.Module, parametrization: nn.Module, name: str = "weight") -> None:
    """Register a codebook on `module.<name>` and freeze the dense original beneath it, so that
    no optimizer updates (or decays) a tensor the forward pass no longer reads."""
    parametrize.register_parametrization(module, name, parametrization)
    module.parametrizations[name].original.requires_grad_(False)


def restore_codebook(module: nn.Module, name: str = "weight") -> None:
    """Re-attach a ScalarCodebook to a tensor whose non-zero values are a codebook (a decoded
    file stores the values, not the parametrization): its distinct non-zeros become the
    centroids and its zeros the mask, so centroid fine-tuning can go on."""
    value = getattr(module, name).detach()
    keep = value != 0
    centroids, inverse = torch.unique(value[keep], return_inverse=True)
    if not centroids.numel():  # an all-zero tensor: one centroid, masked out everywhere
        centroids = value.new_zeros(1)
    indices = torch.zeros(value.shape, dtype=torch.long, device=value.device)
    indices[keep] = inverse
    attach(module, ScalarCodebook(centroids, indices, keep.to(value.dtype)), name)


def shared_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, parametrization) of every weight-sharing codebook in `model`, by `layer.tensor`."""
    found = []
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for name, chain in module.parametrizations.items():
                found += [(f"{module_name}.{name}", p) for p in chain if isinstance(p, SHARED)]
    return found


def chosen_layers(
    model: nn.Module, layers: LayerFilter, per_layer: dict | None = None, what: str = "share"
) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear layers that `layers` names (default: all), checked for a method."""
    chosen = select_layers(model, layers)
    if not chosen:
        raise ConfigError(f"no layers to {what}: the filter matched no convolution or linear layer")
    for name, module in chosen:
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise UnsupportedLayerError(
                f"layer {name} is a {type(module).__name__}: weight sharing takes Conv2d and "
                "Linear layers; leave it out of the layer list"
            )
    unknown = set(per_layer or {}) - {name for name, _ in chosen}
    if unknown:
        raise ConfigError(
            f"per_layer names {', '.join(sorted(unknown))}, which are not among the layers to "
            f"{what}; layers are: {', '.join(n for n, _ in chosen)}"
        )
    return chosen

"""The pruning mask as a parametrization: `weight = dense * mask` (Han et al. 2015).

Because the forward pass multiplies by the mask, a pruned weight is exactly zero whatever the
optimizer does to the dense tensor underneath (momentum, weight decay): retraining is the ordinary
`fit`. A new mask is always combined with the old one, so a pruned connection stays pruned.

Pruning attaches masks; weight sharing, folding, export and the codec read them, so the mask
lives here rather than in netshrink.prune (which re-exports it as `netshrink.prune.mask`), and
no method family imports another for it.
"""

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import own_class


class Mask(nn.Module):
    """`weight = dense * mask`; `dense_std` keeps the std of the dense tensor when it was first
    pruned, so that std-scaled thresholds (Han et al.; Kim et al.) do not drift as weights go."""

    def __init__(self, mask: torch.Tensor, dense_std: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("dense_std", torch.tensor(float(dense_std)))

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense * self.mask


def get_mask(module: nn.Module, name: str = "weight") -> Mask | None:
    """The Mask parametrizing `module.<name>`, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    found = [p for p in module.parametrizations[name] if isinstance(p, Mask)]
    return found[0] if found else None


def dense_std(module: nn.Module, name: str = "weight") -> float:
    """The std of the tensor before any pruning: remembered by its mask, else measured now."""
    mask = get_mask(module, name)
    return (
        float(mask.dense_std) if mask is not None else float(getattr(module, name).detach().std())
    )


def apply_mask(module: nn.Module, name: str, keep: torch.Tensor) -> Mask:
    """Prune `module.<name>` where `keep` is False, on top of any earlier mask; returns the Mask."""
    keep = keep.to(getattr(module, name).dtype)
    mask = get_mask(module, name)
    if mask is None:
        mask = Mask(keep, dense_std(module, name))
        parametrize.register_parametrization(module, name, mask)
    else:
        mask.mask.mul_(keep)
    return mask


def restore_masks(
    model: nn.Module, layers: list[tuple[str, nn.Module]], names: tuple[str, ...] = ("weight",)
) -> None:
    """Re-attach masks to a model loaded from a checkpoint, from its exact zeros.

    Checkpoints store what the forward pass computes, never masks; a zero weight is a pruned one.
    Tensors without zeros, or with a mask already, are left alone.
    """
    for _, module in layers:
        for name in names:
            tensor = getattr(module, name, None)
            if not isinstance(tensor, torch.Tensor) or get_mask(module, name) is not None:
                continue
            keep = tensor.detach() != 0
            if not keep.all():
                apply_mask(module, name, keep)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zeros in every masked tensor, by `layer.tensor` name."""
    report = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in module.parametrizations:
            if get_mask(module, name) is not None:
                value = getattr(module, name)
                report[f"{module_name}.{name}"] = (
                    1 - float(torch.count_nonzero(value)) / value.numel()
                )
    return report


def bake_masks(model: nn.Module) -> nn.Module:
    """Remove the mask parametrizations, keeping the zeros in the plain tensors."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                if get_mask(module, name) is not None and len(module.parametrizations[name]) == 1:
                    unparametrize(module, name)
    return model


def unparametrize(module: nn.Module, name: str) -> None:
    """`remove_parametrizations(..., leave_parametrized=True)`, safe on a deep copy.

    `copy.deepcopy` shares the class that parametrize injects between a module and its copy, and
    removing a parametrization deletes a property from that class: without a class of its own,
    unparametrizing a copy would break the original.
    """
    own_class(module)
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)

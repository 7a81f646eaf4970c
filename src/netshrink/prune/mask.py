"""The pruning mask, re-exported: it is defined in netshrink.mask, below every method family,
because weight sharing, quantization, export and the codec read masks too."""

from ..mask import (
    Mask,
    apply_mask,
    bake_masks,
    dense_std,
    get_mask,
    layer_sparsity,
    restore_masks,
    unparametrize,
)

__all__ = [
    "Mask",
    "apply_mask",
    "bake_masks",
    "dense_std",
    "get_mask",
    "layer_sparsity",
    "restore_masks",
    "unparametrize",
]

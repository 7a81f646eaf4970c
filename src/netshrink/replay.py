"""Replaying structural edits (netshrink.edits) on a freshly built architecture: how a
checkpoint or a `.nsk` file rebuilds a restructured model without storing code or pickles.

This sits above the method families: each edit is checked and applied by the method that
defines it (channel edits: netshrink.prune.surgery; factors: netshrink.share.svd; folds:
netshrink.fold; the fixed-point model: netshrink.quant.quantize), while netshrink.edits,
which the methods import to record what they did, imports none of them. A file's edit list is
untrusted: every edit is checked against the model before any changes it (docs/format.md,
"Checks and limits").

Example:
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3))
    >>> model = replay_edits(model, [KeepChannels(module="0", dim="out", keep=(0, 1, 2)),
    ...                              KeepChannels(module="1", dim="in", keep=(0, 1, 2))])
    >>> model[1].weight.shape, len(structural_edits(model))
    (torch.Size([4, 3, 3, 3]), 2)
"""

from collections.abc import Iterable

from torch import nn

from netshrink.edits import (
    BatchNormAsConv,
    Edit,
    FactorLayer,
    FixedPointFormats,
    FoldBatchNorm,
    check_edit_counts,
    edit_names,
    record_edits,
)
from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.fold import batchnorm_as_conv, check_convertible, check_foldable, fold_into
from netshrink.layers import unwrap
from netshrink.prune.surgery import apply_keep, channel_count, check_keep, edit_target
from netshrink.quant.quantize import apply_formats
from netshrink.share.svd import check_factorable, factored_layers


def replay_edits(model: nn.Module, edits: Iterable[Edit]) -> nn.Module:
    """Apply `edits` in order and record them on the model; returns the model, which is a new
    torch.fx GraphModule when the edits include a fixed-point model (use the return value).

    Every channel, factor and fold edit is checked first (module present and of the right type,
    indices in range of the size it will have when its turn comes), so a bad list raises
    ConfigError or UnsupportedLayerError and leaves the model untouched; a fixed-point edit is
    checked against the traced graph before it changes anything. A list may name one module at
    most `MAX_EDITS_PER_MODULE` times and hold one fixed-point edit, so replay stays linear.
    """
    edits = list(edits)
    root = unwrap(model)
    modules = _check_all(root, edits)
    for edit, module in zip(edits, modules):
        root = _apply(root, module, edit)
    record_edits(root, edits)
    return root if root is not unwrap(model) else model


def _check_all(root: nn.Module, edits: list[Edit]) -> list[nn.Module]:
    check_edit_counts(edits)
    sizes: dict[tuple[str, str], int] = {}  # channel counts as earlier edits in the list left them
    replaced: dict[str, int] = {}  # module name -> the edit that factored or folded it away
    modules = []
    for number, edit in enumerate(edits):
        for name in edit_names(edit):
            if name in replaced:
                raise ConfigError(
                    f"structural edit {number} names {name!r}, which edit {replaced[name]} "
                    "already factored or folded away; the edits are not a valid sequence"
                )
        if isinstance(edit, FixedPointFormats):
            modules.append(None)  # checked against the traced graph when applied
            continue
        if isinstance(edit, FoldBatchNorm):
            modules.append(_check_fold(root, edit, number))
            replaced[edit.bn] = number
            continue
        if isinstance(edit, BatchNormAsConv):
            bn = edit_target(root, edit.bn, number)
            try:
                check_convertible(bn, edit.bn)
            except UnsupportedLayerError as exc:
                raise UnsupportedLayerError(f"structural edit {number}: {exc}") from None
            modules.append(bn)
            replaced[edit.bn] = number
            continue
        module = edit_target(root, edit.module, number)
        if isinstance(edit, FactorLayer):
            _check_factor(module, edit, number, sizes)
            replaced[edit.module] = number
        else:
            check_keep(module, edit, number, sizes)
        modules.append(module)
    return modules


def _check_factor(module: nn.Module, edit: FactorLayer, number: int, sizes: dict) -> None:
    try:
        check_factorable(module)
    except UnsupportedLayerError as exc:
        raise UnsupportedLayerError(f"structural edit {number} ({edit.module}): {exc}") from None
    rows = sizes.get((edit.module, "out"), channel_count(module, "out"))
    cols = sizes.get((edit.module, "in"), channel_count(module, "in"))
    if isinstance(module, nn.Conv2d):
        cols *= module.kernel_size[0] * module.kernel_size[1]
    if edit.rank > min(rows, cols):  # a larger rank only grows the layer: never written
        raise ConfigError(
            f"structural edit {number} factors {edit.module} at rank {edit.rank}, but its "
            f"{rows}x{cols} weight has rank at most {min(rows, cols)}"
        )


def _check_fold(root: nn.Module, edit: FoldBatchNorm, number: int) -> nn.Module:
    conv = edit_target(root, edit.conv, number)
    try:
        check_foldable(conv, edit_target(root, edit.bn, number))
    except UnsupportedLayerError as exc:
        raise UnsupportedLayerError(f"structural edit {number} ({edit.conv}): {exc}") from None
    return conv


def _apply(root: nn.Module, module: nn.Module | None, edit: Edit) -> nn.Module:
    """Apply one edit; returns the root, which a fixed-point edit replaces by a GraphModule."""
    if isinstance(edit, FixedPointFormats):
        return apply_formats(root, edit)
    if isinstance(edit, FoldBatchNorm):
        fold_into(root, edit.conv, edit.bn)
        return root
    if isinstance(edit, BatchNormAsConv):
        batchnorm_as_conv(root, edit.bn)
        return root
    if isinstance(edit, FactorLayer):
        root.set_submodule(edit.module, factored_layers(module, edit.rank))
        return root
    apply_keep(module, edit)
    return root

"""Layer surgery for filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets"):
short functions that keep some channels of ONE layer and drop the rest, physically.

Which layers must be cut together is decided elsewhere (`channel_graph`); these functions only
slice. The channel edit (netshrink.edits.KeepChannels) is checked and applied here
(`check_keep`, `apply_keep`), for netshrink.replay and for `cut_channels`, filter pruning's own
replay of its plan. Each takes the indices to keep (sorted, unique) and replaces the sliced tensors with fresh,
contiguous ones, so the layer is an ordinary dense layer afterwards. Parameters stay Parameters
with their `requires_grad`; an optimizer built before the surgery holds the old tensors, so build
it after.

Example:
    >>> conv = nn.Conv2d(3, 8, 3)
    >>> keep_out_channels(conv, [0, 2, 5])
    >>> conv.weight.shape, conv.out_channels
    (torch.Size([3, 3, 3, 3]), 3)
"""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from netshrink.edits import KeepChannels, check_edit_counts, record_edits
from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.layers import unwrap

Dim = Literal["out", "in", "depthwise", "batchnorm"]


def keep_out_channels(module: nn.Module, keep: Sequence[int] | torch.Tensor) -> None:
    """Keep the output channels `keep` of a Conv2d (groups 1) or the output features of a Linear:
    weight rows, bias, and `out_channels` / `out_features`."""
    layer = _dense(module, "out")
    _slice(layer, "weight", 0, keep)
    _slice(layer, "bias", 0, keep)
    _set_width(layer, out=len(keep))


def keep_in_channels(module: nn.Module, keep: Sequence[int] | torch.Tensor) -> None:
    """Keep the input channels `keep` of a Conv2d (groups 1), or the input features of a Linear
    (for a Linear after a flatten, `keep` holds feature indices, not channel indices)."""
    layer = _dense(module, "in")
    _slice(layer, "weight", 1, keep)
    _set_width(layer, inp=len(keep))


def keep_batchnorm(module: nn.Module, keep: Sequence[int] | torch.Tensor) -> None:
    """Keep the channels `keep` of a BatchNorm: affine weight and bias, running mean and var."""
    norm = _batchnorm(module)
    for name in ("weight", "bias", "running_mean", "running_var"):
        _slice(norm, name, 0, keep)
    norm.num_features = len(keep)


def keep_depthwise(module: nn.Module, keep: Sequence[int] | torch.Tensor) -> None:
    """Keep the channels `keep` of a depthwise Conv2d (groups == in == out channels): each channel
    is its own filter, so input, output and groups shrink together."""
    conv = _depthwise(module)
    _slice(conv, "weight", 0, keep)
    _slice(conv, "bias", 0, keep)
    conv.in_channels = conv.out_channels = conv.groups = len(keep)


def channel_count(module: nn.Module, dim: Dim) -> int:
    """How many channels an edit along `dim` of `module` indexes; raises UnsupportedLayerError
    for a layer that edit cannot slice. Changes nothing, so a whole list of edits can be checked
    before the first is applied."""
    if dim == "batchnorm":
        return _batchnorm(module).num_features
    if dim == "depthwise":
        return _depthwise(module).out_channels
    return _dense(module, dim).weight.shape[0 if dim == "out" else 1]


def _dense(module: nn.Module, dim: str) -> nn.Conv2d | nn.Linear:
    _refuse_parametrized(module)
    if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
        return module
    raise UnsupportedLayerError(
        f"cannot slice the {dim!r} channels of {_describe(module)}: only Conv2d with groups=1 "
        "and Linear layers can be; exclude this layer from filter pruning"
    )


def _depthwise(module: nn.Module) -> nn.Conv2d:
    _refuse_parametrized(module)
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels:
        return module
    raise UnsupportedLayerError(
        f"{_describe(module)} is not a depthwise Conv2d (groups == in == out channels); "
        "exclude it from filter pruning"
    )


def _batchnorm(module: nn.Module) -> _BatchNorm:
    _refuse_parametrized(module)
    if isinstance(module, _BatchNorm):
        return module
    raise UnsupportedLayerError(
        f"{_describe(module)} is not a BatchNorm layer; exclude it from filter pruning"
    )


def _refuse_parametrized(module: nn.Module) -> None:
    # A parametrization (mask, codebook) holds tensors shaped like the dense weight; slicing
    # `original` alone would leave them inconsistent.
    if parametrize.is_parametrized(module):
        raise UnsupportedLayerError(
            f"{_describe(module)} is parametrized (a mask, codebook or quantizer): apply filter "
            "pruning before masks, codebooks and fixed point, not after"
        )


def _slice(module: nn.Module, name: str, dim: int, keep) -> None:
    old = getattr(module, name)
    if old is None:
        return
    index = torch.as_tensor(keep, dtype=torch.long, device=old.device)
    new = old.detach().index_select(dim, index).contiguous()
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(new, requires_grad=old.requires_grad)
    setattr(module, name, new)  # a buffer stays a buffer: nn.Module routes it by name


def _set_width(
    layer: nn.Conv2d | nn.Linear, *, out: int | None = None, inp: int | None = None
) -> None:
    if isinstance(layer, nn.Linear):
        layer.out_features = out if out is not None else layer.out_features
        layer.in_features = inp if inp is not None else layer.in_features
    else:
        layer.out_channels = out if out is not None else layer.out_channels
        layer.in_channels = inp if inp is not None else layer.in_channels


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return f"Conv2d({module.in_channels}, {module.out_channels}, groups={module.groups})"
    return type(module).__name__


def cut_channels(model: nn.Module, edits: Sequence[KeepChannels]) -> None:
    """Apply channel edits to `model` and record them: filter pruning's replay of its plan, with
    the checks netshrink.replay makes on channel edits (the list's counts, each module present,
    of the right type, indices in range), all before the first layer changes, so a failing call
    leaves the model as it was. (netshrink.replay sits above the method families, so filter
    pruning cannot import it.)"""
    edits = list(edits)
    root = unwrap(model)
    check_edit_counts(edits)
    sizes: dict[tuple[str, str], int] = {}
    modules = []
    for number, edit in enumerate(edits):
        module = edit_target(root, edit.module, number)
        check_keep(module, edit, number, sizes)
        modules.append(module)
    for edit, module in zip(edits, modules):
        apply_keep(module, edit)
    record_edits(root, edits)


def edit_target(root: nn.Module, name: str, number: int) -> nn.Module:
    """The module named `name`, which structural edit `number` names; ConfigError if absent."""
    try:
        return root.get_submodule(name)
    except AttributeError:
        raise ConfigError(
            f"structural edit {number} names module {name!r}, which this model does not "
            "have; the edits were recorded on a different architecture"
        ) from None


def check_keep(module: nn.Module, edit: KeepChannels, number: int, sizes: dict) -> None:
    """Raise unless channel edit `number` fits `module`: the layer type, and its indices within
    the size it has when the edit's turn comes (`sizes`: (module, "in" | "out") -> channel
    count as the earlier edits of the list left it; updated)."""
    key = (edit.module, "in" if edit.dim == "in" else "out")
    try:
        size = channel_count(module, edit.dim)  # also checks the layer type, every time
    except UnsupportedLayerError as exc:
        raise UnsupportedLayerError(f"structural edit {number} ({edit.module}): {exc}") from None
    size = sizes.get(key, size)  # an earlier edit in this list may already have cut it
    if edit.keep[-1] >= size:
        raise ConfigError(
            f"structural edit {number} keeps index {edit.keep[-1]} of {edit.module}'s "
            f"{edit.dim!r} channels, but it has {size}; the edits do not fit this model"
        )
    sizes[key] = len(edit.keep)


def apply_keep(module: nn.Module, edit: KeepChannels) -> None:
    """Cut `module` (checked by `check_keep`) to the channels the edit keeps."""
    match edit.dim:
        case "out":
            keep_out_channels(module, edit.keep)
        case "in":
            keep_in_channels(module, edit.keep)
        case "depthwise":
            keep_depthwise(module, edit.keep)
        case "batchnorm":
            keep_batchnorm(module, edit.keep)

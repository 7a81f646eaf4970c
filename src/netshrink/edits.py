"""Structural edits: what a structural method (filter pruning, SVD factorization) did to the
module tree, recorded so that a file can rebuild the model without storing code or pickles.

A decoded model is the architecture, then its edits replayed in order, then the tensor values
(DESIGN.md, "Structure and values in the file"). Each edit is a small frozen pydantic model with
a `kind` tag; `Edit` is their tagged union, so a new edit type joins it by adding itself there.
The edits already applied to a model live in the plain list `model.structural_edits` on its root
module: visible state on the model, copied with it, never a global.

Example:
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3))
    >>> model = replay_edits(model, [KeepChannels(module="0", dim="out", keep=(0, 1, 2)),
    ...                              KeepChannels(module="1", dim="in", keep=(0, 1, 2))])
    >>> model[1].weight.shape, len(structural_edits(model))
    (torch.Size([4, 3, 3, 3]), 2)
"""

from collections.abc import Iterable
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from netshrink.errors import ConfigError, UnsupportedLayerError
from netshrink.layers import unwrap


class KeepChannels(BaseModel):
    """Keep the channels `keep` (sorted, unique) along `dim` of the module named `module`.

    `dim`: "out" (Conv2d / Linear outputs), "in" (Conv2d / Linear inputs; for a Linear after a
    flatten, `keep` holds the expanded feature indices), "depthwise" (a depthwise Conv2d: its
    channels and groups) or "batchnorm" (a BatchNorm's parameters and running statistics).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["keep_channels"] = "keep_channels"
    module: str
    dim: Literal["out", "in", "depthwise", "batchnorm"]
    keep: tuple[int, ...]

    @field_validator("keep")
    @classmethod
    def _sorted_unique(cls, keep: tuple[int, ...]) -> tuple[int, ...]:
        if not keep or keep[0] < 0 or any(a >= b for a, b in zip(keep, keep[1:])):
            raise ValueError("keep must be a non-empty, strictly increasing list of indices >= 0")
        return keep


class FactorLayer(BaseModel):
    """Replace the Linear or Conv2d named `module` by its rank-`rank` factors, an nn.Sequential
    of two layers under the same name (SVD; netshrink.share.svd)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["factor"] = "factor"
    module: str
    rank: int = Field(ge=1)


Edit = Annotated[Union[KeepChannels, FactorLayer], Field(discriminator="kind")]


def structural_edits(model: nn.Module) -> list[Edit]:
    """The edits applied to `model` so far, oldest first (a copy of its list)."""
    return list(getattr(unwrap(model), "structural_edits", []))


def record_edits(model: nn.Module, edits: Iterable[Edit]) -> None:
    """Append `edits` to `model.structural_edits` (created on the root module if missing)."""
    root = unwrap(model)
    if not isinstance(getattr(root, "structural_edits", None), list):
        root.structural_edits = []
    root.structural_edits.extend(edits)


def replay_edits(model: nn.Module, edits: Iterable[Edit]) -> nn.Module:
    """Apply `edits` in order and record them on the model; returns `model`.

    Every edit is checked first (module present and of the right type, indices in range of the
    size it will have when its turn comes), so a bad list raises ConfigError or
    UnsupportedLayerError and leaves the model untouched. Needs no graph analysis: the edits
    hold everything.
    """
    edits = list(edits)
    root = unwrap(model)
    modules = _check_all(root, edits)
    for edit, module in zip(edits, modules):
        _apply(root, module, edit)
    record_edits(root, edits)
    return model


def _check_all(root: nn.Module, edits: list[Edit]) -> list[nn.Module]:
    # Import here: netshrink.prune's package may import modules that import this one.
    from netshrink.prune.surgery import channel_count

    sizes: dict[tuple[str, str], int] = {}
    modules = []
    for number, edit in enumerate(edits):
        module = _lookup(root, edit, number)
        if isinstance(edit, FactorLayer):
            _check_factor(module, edit, number)
            modules.append(module)
            continue
        key = (edit.module, "in" if edit.dim == "in" else "out")
        try:
            size = channel_count(module, edit.dim)  # also checks the layer type, every time
        except UnsupportedLayerError as exc:
            raise UnsupportedLayerError(
                f"structural edit {number} ({edit.module}): {exc}"
            ) from None
        size = sizes.get(key, size)  # an earlier edit in this list may already have cut it
        if edit.keep[-1] >= size:
            raise ConfigError(
                f"structural edit {number} keeps index {edit.keep[-1]} of {edit.module}'s "
                f"{edit.dim!r} channels, but it has {size}; the edits do not fit this model"
            )
        sizes[key] = len(edit.keep)
        modules.append(module)
    return modules


def _check_factor(module: nn.Module, edit: FactorLayer, number: int) -> None:
    from netshrink.share.svd import check_factorable

    try:
        check_factorable(module)
    except UnsupportedLayerError as exc:
        raise UnsupportedLayerError(f"structural edit {number} ({edit.module}): {exc}") from None


def _lookup(root: nn.Module, edit: Edit, number: int) -> nn.Module:
    try:
        return root.get_submodule(edit.module)
    except AttributeError:
        raise ConfigError(
            f"structural edit {number} names module {edit.module!r}, which this model does not "
            "have; the edits were recorded on a different architecture"
        ) from None


def _apply(root: nn.Module, module: nn.Module, edit: Edit) -> None:
    from netshrink.prune import surgery

    if isinstance(edit, FactorLayer):
        from netshrink.share.svd import factored_layers

        root.set_submodule(edit.module, factored_layers(module, edit.rank))
        return
    match edit.dim:
        case "out":
            surgery.keep_out_channels(module, edit.keep)
        case "in":
            surgery.keep_in_channels(module, edit.keep)
        case "depthwise":
            surgery.keep_depthwise(module, edit.keep)
        case "batchnorm":
            surgery.keep_batchnorm(module, edit.keep)

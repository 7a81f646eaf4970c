"""Structural edits: what a structural method (filter pruning, SVD factorization, batch-norm
folding, the fixed-point graph) did to the module tree, recorded so that a file can rebuild the
model without storing code or pickles.

A decoded model is the architecture, then its edits replayed in order, then the tensor values
(DESIGN.md, "Structure and values in the file"). Each edit is a small frozen pydantic model with
a `kind` tag; `Edit` is their tagged union, so a new edit type joins it by adding itself there.
The edits already applied to a model live in a plain list on its root module
(`model.structural_edits`; `model.meta["structural_edits"]` on a torch.fx GraphModule, whose
deepcopy keeps only `meta`): visible state on the model, copied with it, never a global.

This module is the record and its bounds only: the methods import it to record what they did
(`record_edits`), and it imports none of them. Checking a list against a model and applying it
is netshrink.replay, which sits above the methods.

Example:
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3))
    >>> record_edits(model, [KeepChannels(module="0", dim="out", keep=(0, 1, 2))])
    >>> record_edits(model, [KeepChannels(module="0", dim="out", keep=(0, 2))])  # merged
    >>> structural_edits(model)[0].keep
    (0, 2)
"""

from collections.abc import Iterable
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_serializer
from torch import fx, nn

from netshrink.config import Config
from netshrink.errors import ConfigError
from netshrink.layers import unwrap

# Bounds a file's edit list must keep (docs/format.md, "Checks and limits"): real lists hold a
# few edits a layer, and replaying stays linear in the model's size.
MAX_EDITS = 10_000
MAX_EDITS_PER_MODULE = 16
MAX_KEEP = 1 << 20  # indices in one KeepChannels


class KeepChannels(Config):
    """Keep the channels `keep` (sorted, unique) along `dim` of the module named `module`.

    `dim`: "out" (Conv2d / Linear outputs), "in" (Conv2d / Linear inputs; for a Linear after a
    flatten, `keep` holds the expanded feature indices), "depthwise" (a depthwise Conv2d: its
    channels and groups) or "batchnorm" (a BatchNorm's parameters and running statistics).
    """

    kind: Literal["keep_channels"] = "keep_channels"
    module: str
    dim: Literal["out", "in", "depthwise", "batchnorm"]
    keep: Annotated[tuple[int, ...], Field(max_length=MAX_KEEP)]

    @field_validator("keep")
    @classmethod
    def _sorted_unique(cls, keep: tuple[int, ...]) -> tuple[int, ...]:
        if not keep or keep[0] < 0 or any(a >= b for a, b in zip(keep, keep[1:])):
            raise ValueError("keep must be a non-empty, strictly increasing list of indices >= 0")
        return keep


class FactorLayer(Config):
    """Replace the Linear or Conv2d named `module` by its rank-`rank` factors, an nn.Sequential
    of two layers under the same name (SVD; netshrink.share.svd)."""

    kind: Literal["factor"] = "factor"
    module: str
    rank: int = Field(ge=1)


class FoldBatchNorm(Config):
    """Fold the BatchNorm named `bn` into the Conv2d or Linear `conv` that feeds it, which gains
    a bias; the BatchNorm becomes an nn.Identity (netshrink.fold)."""

    kind: Literal["fold_batchnorm"] = "fold_batchnorm"
    conv: str
    bn: str


class BatchNormAsConv(Config):
    """Replace the BatchNorm2d named `bn`, which follows no layer it could fold into (after an
    addition or a concatenation: pre-activation networks), by a depthwise 1x1 Conv2d computing the
    same per-channel affine map, so that fixed point runs it as a per-channel integer
    multiply-add (netshrink.fold)."""

    kind: Literal["batchnorm_as_conv"] = "batchnorm_as_conv"
    bn: str


class FormatSpec(Config):
    """One dynamic fixed-point format: `bits`-bit integers scaled by 2**-frac."""

    bits: int = Field(ge=1, le=32)
    frac: int = Field(ge=-64, le=64)
    signed: bool = True


# The largest height or width an average pool with uneven windows may read (its divisors, one an
# output, are made from it: a file's number, so bounded; 4096 x 4096 int64 divisors are 128 MiB).
MAX_POOL_SIDE = 4096


class ActivationSpec(FormatSpec):
    """An activation quantizer's format; after an average pool, the pool's `divisor` and the
    fractional length `input_frac` of the values it averages (the integer path divides once).
    Where the pool's windows hold different numbers of values, `pool_input` is the height and
    width it reads: each output's divisor follows from them and the pool's settings
    (netshrink.quant.plan.window_divisors)."""

    divisor: int = Field(1, ge=1)
    input_frac: int | None = None
    pool_input: tuple[Annotated[int, Field(ge=1, le=MAX_POOL_SIDE)], ...] | None = Field(
        None, min_length=2, max_length=2
    )

    @model_serializer(mode="wrap")
    def _pool_input_written_where_set(self, handler):
        # only a pool with uneven windows has one: a file's other quantizers stay as small (and
        # as earlier files wrote them)
        data = handler(self)
        if data.get("pool_input") is None:
            data.pop("pool_input", None)
        return data


class FixedPointFormats(Config):
    """The fixed-point model (netshrink.quant): the model traced with torch.fx, an activation
    quantizer inserted at each quantization point (named in `activations`), and the weights and
    biases of the layers in `weights` on their grids; `accumulator` bits in the integer path;
    `float_layers` left in floating point; `ties`: where rounding sends a value halfway between
    two integers ("up", as a device's add-and-shift; "even", as ONNX Runtime)."""

    kind: Literal["fixed_point"] = "fixed_point"
    weights: dict[str, FormatSpec]
    biases: dict[str, FormatSpec] = {}
    activations: dict[str, ActivationSpec]
    accumulator: int = Field(32, ge=8, le=64)
    float_layers: tuple[str, ...] = ()
    ties: Literal["up", "even"] = "up"

    @model_serializer(mode="wrap")
    def _default_ties_unwritten(self, handler):
        # files written before `ties` existed read as "up": the default stays out of the header
        data = handler(self)
        if data.get("ties") == "up":
            del data["ties"]
        return data


Edit = Annotated[
    Union[KeepChannels, FactorLayer, FoldBatchNorm, BatchNormAsConv, FixedPointFormats],
    Field(discriminator="kind"),
]


def structural_edits(model: nn.Module) -> list[Edit]:
    """The edits applied to `model` so far, oldest first (a copy of its list)."""
    return list(edit_list(unwrap(model)))


def record_edits(model: nn.Module, edits: Iterable[Edit]) -> None:
    """Append `edits` to the model's list of structural edits. A channel edit of a module whose
    same dimension an earlier edit already cut is merged into it (keeping `old.keep[i]` for each
    `i` it keeps), so rounds of filter pruning leave one edit a module and dimension, and the
    list stays within what a reader accepts (`MAX_EDITS_PER_MODULE`)."""
    existing = edit_list(unwrap(model))
    for edit in edits:
        earlier = _mergeable(existing, edit)
        if earlier is None:
            existing.append(edit)
        else:
            kept = existing[earlier].keep
            existing[earlier] = edit.model_copy(update={"keep": tuple(kept[i] for i in edit.keep)})


def _mergeable(existing: list[Edit], edit: Edit) -> int | None:
    """The index of the channel edit that `edit` can be merged into, or None. Cuts of one
    dimension compose, and cuts of the other dimension commute with them; a factor or fold of
    the module, or the fixed-point edit, ends the search."""
    if not isinstance(edit, KeepChannels):
        return None
    for index in range(len(existing) - 1, -1, -1):
        other = existing[index]
        if isinstance(other, FixedPointFormats):
            return None
        if edit.module not in edit_names(other):
            continue
        if not isinstance(other, KeepChannels):
            return None
        if other.dim == edit.dim:
            return index
    return None


def edit_list(root: nn.Module) -> list[Edit]:
    """The live list of edits on a root module, created if missing: `root.structural_edits`,
    or for a torch.fx GraphModule `root.meta["structural_edits"]`, which its deepcopy keeps."""
    if isinstance(root, fx.GraphModule):
        return root.meta.setdefault("structural_edits", [])
    if not isinstance(getattr(root, "structural_edits", None), list):
        root.structural_edits = []
    return root.structural_edits


def edit_names(edit: Edit) -> tuple[str, ...]:
    """The modules `edit` names (none for the fixed-point edit, which names the whole model)."""
    if isinstance(edit, FoldBatchNorm):
        return (edit.conv, edit.bn)
    if isinstance(edit, BatchNormAsConv):
        return (edit.bn,)
    return () if isinstance(edit, FixedPointFormats) else (edit.module,)


def check_edit_counts(edits: list[Edit]) -> None:
    """ConfigError when a list holds more edits than a reader replays (in all, on one module, or
    fixed-point edits); `pack` checks it too, so netshrink never writes a file it refuses."""
    if len(edits) > MAX_EDITS:
        raise ConfigError(f"{len(edits)} structural edits, more than the {MAX_EDITS} allowed")
    per_module: dict[str, int] = {}
    for edit in edits:
        for name in set(edit_names(edit)):
            per_module[name] = per_module.get(name, 0) + 1
    busiest = max(per_module, key=per_module.get, default=None)
    if busiest is not None and per_module[busiest] > MAX_EDITS_PER_MODULE:
        raise ConfigError(
            f"{per_module[busiest]} structural edits name {busiest!r}, more than the "
            f"{MAX_EDITS_PER_MODULE} allowed for one module"
        )
    if sum(isinstance(e, FixedPointFormats) for e in edits) > 1:
        raise ConfigError("more than one fixed-point edit; a model has one set of formats")

"""Checkpoints: weights in safetensors plus a JSON sidecar; loading never unpickles.

A checkpoint `run/model` is two files: `run/model.safetensors` (the state dict) and
`run/model.json` (what the weights are: the architecture as a zoo name or import path with its
JSON arguments, the input shape, the data set, the training settings and the measured accuracy).
Loading rebuilds the architecture from the sidecar, replays the structural edits recorded there
(filter pruning's kept channels; netshrink.edits, netshrink.replay), and loads the tensors into it, strictly. A
file that is a pickle (`torch.save`) is refused before anything parses it.
"""

import json
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import ValidationError
from torch import nn
from torch.nn.utils import parametrize

from .config import Config, takes_mappings
from .data import DataConfig
from .edits import MAX_EDITS, Edit, check_edit_counts, structural_edits
from .errors import ConfigError, CorruptFileError, LimitError, UnsupportedLayerError
from .files import atomic_write, read_safetensors, write_safetensors
from .models import ModelSpec, build_model
from .models.registry import AllowImport
from .quant.quantize import weight_quant
from .replay import replay_edits
from .share.codebooks import ScalarCodebook, restore_codebook
from .train import FitConfig
from .untrusted import (
    MAX_SIDECAR_BYTES,
    ClassCount,
    InputShape,
    at_most,
    build_skeleton,
    check_skeleton,
)

FORMAT = "netshrink-checkpoint"


class CheckpointMeta(Config):
    """The JSON sidecar: everything needed to rebuild the model, and what it measured."""

    format: Literal["netshrink-checkpoint"] = FORMAT
    version: Literal[1] = 1
    model: ModelSpec
    input_shape: InputShape
    num_classes: ClassCount
    data: DataConfig | None = None
    fit: FitConfig | None = None
    metrics: dict[str, float] = {}
    # structural edits, replayed on the architecture before the weights
    edits: Annotated[list[Edit], at_most(MAX_EDITS)] = []
    # layers whose weight is a scalar codebook (k-means sharing): a checkpoint stores the values
    # it computes, and `restore_shared` re-attaches the codebook so that later methods keep it
    shared: Annotated[list[str], at_most(MAX_EDITS)] = []


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) for a checkpoint named by either file or by their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


@takes_mappings
def save_checkpoint(model: nn.Module, path: str | Path, meta: CheckpointMeta) -> Path:
    """Write `model`'s state dict and `meta`, with the model's structural edits in the sidecar;
    each file is replaced atomically. Returns the stem."""
    shared = [name for name, module in model.named_modules() if has_codebook(module)]
    meta = meta.model_copy(update={"edits": structural_edits(model), "shared": shared})
    weights, sidecar = checkpoint_paths(path)
    text = json.dumps(meta.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    check_edit_counts(meta.edits)  # what load_checkpoint would refuse is never written
    if len(text.encode()) > MAX_SIDECAR_BYTES:
        raise ConfigError(f"cannot save {sidecar}: its sidecar is over {MAX_SIDECAR_BYTES:,} bytes")
    weights.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or strided storage; a contiguous copy of each tensor is exact.
    tensors = {k: v.contiguous().clone() for k, v in effective_state_dict(model).items()}
    write_safetensors(weights, tensors, metadata={"format": FORMAT})
    atomic_write(sidecar, lambda tmp: tmp.write_text(text))
    return weights.with_suffix("")


def has_codebook(module: nn.Module) -> bool:
    """Whether `module`'s weight is computed by a scalar codebook (k-means weight sharing)."""
    chain = getattr(getattr(module, "parametrizations", None), "weight", None)
    return chain is not None and any(isinstance(p, ScalarCodebook) for p in chain)


def restore_shared(model: nn.Module, names: list[str], where: str = "checkpoint") -> None:
    """Re-attach a scalar codebook to each layer of `names` (a sidecar's `shared`, a run's
    record) whose weight is not already shared or on a fixed-point grid (its own codebook), so
    that fine-tuning trains the centroids and batch-norm folding refuses to scale them.
    CorruptFileError for a name that is not a layer with a weight."""
    modules = dict(model.named_modules())
    for name in names:
        module = modules.get(name)
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise CorruptFileError(f"{where}: shared layer {name!r} is not a layer of the model")
        if not has_codebook(module) and weight_quant(module) is None:
            restore_codebook(module)


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the forward pass sees it, loadable into the unparametrized architecture.

    A parametrized tensor (a pruning mask, a codebook) is stored under its own name with the value
    it computes; its dense `original` and the parametrization's buffers are not stored, so a
    compressed model's checkpoint is never larger than the dense one.
    """
    state = {
        k: v.detach().cpu()
        for k, v in model.state_dict().items()
        if "parametrizations" not in k.split(".")
    }
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            prefix = f"{name}." if name else ""
            for tensor_name in module.parametrizations:
                state[prefix + tensor_name] = getattr(module, tensor_name).detach().cpu()
    return state


def load_checkpoint(
    path: str | Path, *, allow_import: AllowImport = ()
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode).

    A sidecar naming an import path (`package.module:factory`) is built only when that exact
    name is in `allow_import` (netshrink.models.registry's import policy)."""
    weights, sidecar = checkpoint_paths(path)
    meta = read_meta(sidecar)
    # safetensors checks that every tensor's bytes are in the file: loading takes at most its size
    tensors = read_safetensors(weights)
    # the sidecar's sizes are only claims: build on the meta device and compare before allocating
    skeleton = build_skeleton(
        lambda: _build(meta, sidecar, allow_import),
        meta.edits,
        str(sidecar),
        "its model spec",
        replay=replay_edits,
    )
    check_skeleton(skeleton, {k: tuple(v.shape) for k, v in tensors.items()}, str(weights))
    model = _build(meta, sidecar, allow_import)
    try:
        model = replay_edits(model, meta.edits)
    except (ConfigError, UnsupportedLayerError) as exc:
        raise CorruptFileError(
            f"{sidecar}: its structural edits do not fit the architecture ({exc})"
        ) from None
    try:
        load_effective_state_dict(model, tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CorruptFileError(
            f"{weights}: weights do not fit the architecture in {sidecar.name} ({first})"
        ) from None
    return model.eval(), meta


def _build(meta: CheckpointMeta, sidecar: Path, allow_import: AllowImport) -> nn.Module:
    c, h, _ = meta.input_shape
    return build_model(
        meta.model,
        num_classes=meta.num_classes,
        in_channels=c,
        input_size=h,
        allow_import=allow_import,
        where=str(sidecar),
    )


def load_effective_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load what `effective_state_dict` wrote, strictly. A tensor that the model parametrizes
    (a fixed-point weight, after a replayed edit) is assigned through its parametrization, so it
    lands in `original` (values already on their grid stay there); the rest load as usual.
    Raises RuntimeError on a missing, unexpected or misshapen tensor."""
    tensors = dict(tensors)
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in module.parametrizations:
            key = f"{name}.{tensor_name}" if name else tensor_name
            if key not in tensors:
                raise RuntimeError(f"Missing key in state dict: {key}")
            value, current = tensors.pop(key), getattr(module, tensor_name)
            if value.shape != current.shape:
                raise RuntimeError(
                    f"size mismatch for {key}: {tuple(value.shape)} stored, "
                    f"{tuple(current.shape)} in the model"
                )
            with torch.no_grad():
                setattr(module, tensor_name, value.to(current.dtype))
    # The parametrizations' own state (original, masks) is already in place: keep it as it is.
    kept = {k: v for k, v in model.state_dict().items() if "parametrizations" in k.split(".")}
    model.load_state_dict({**kept, **tensors}, strict=True)


def read_meta(sidecar: Path) -> CheckpointMeta:
    """Parse and validate a checkpoint's JSON sidecar."""
    packed = sidecar.with_suffix("")  # a checkpoint named model.nsk has the sidecar model.nsk.json
    if not sidecar.is_file() and packed.suffix == ".nsk" and packed.is_file():
        raise ConfigError(
            f"{packed} is a compressed .nsk file, not a checkpoint: decode it with "
            f"`netshrink unpack {packed} -o CKPT` first"
        )
    if not sidecar.is_file():
        raise CorruptFileError(
            f"{sidecar}: no such checkpoint sidecar (a checkpoint is a"
            " .safetensors file with a .json beside it)"
        )
    if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
        raise LimitError(f"{sidecar}: over {MAX_SIDECAR_BYTES:,} bytes, too large for a sidecar")
    try:
        return CheckpointMeta.model_validate(json.loads(sidecar.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{sidecar}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise CorruptFileError(
            f"{sidecar}: not a netshrink checkpoint sidecar ({_first_error(exc)})"
        ) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    return f"{where}: {err['msg']}"

"""Checkpoints: weights in safetensors plus a JSON sidecar; loading never unpickles.

A checkpoint `run/model` is two files: `run/model.safetensors` (the state dict) and
`run/model.json` (what the weights are: the architecture as a zoo name or import path with its
JSON arguments, the input shape, the data set, the training settings and the measured accuracy).
Loading rebuilds the architecture from the sidecar and loads the tensors into it, strictly. A file
that is a pickle (`torch.save`) is refused before anything parses it.
"""

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from .data import DataConfig
from .errors import CorruptFileError
from .models import ModelSpec, build_model
from .train import FitConfig

FORMAT = "netshrink-checkpoint"
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


class CheckpointMeta(BaseModel):
    """The JSON sidecar: everything needed to rebuild the model, and what it measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["netshrink-checkpoint"] = FORMAT
    version: Literal[1] = 1
    model: ModelSpec
    input_shape: tuple[int, int, int]
    num_classes: int
    data: DataConfig | None = None
    fit: FitConfig | None = None
    metrics: dict[str, float] = {}


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) for a checkpoint named by either file or by their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_checkpoint(model: nn.Module, path: str | Path, meta: CheckpointMeta) -> Path:
    """Write `model`'s state dict and `meta`; each file is replaced atomically. Returns the stem."""
    weights, sidecar = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or strided storage; a contiguous copy of each tensor is exact.
    tensors = {k: v.contiguous().clone() for k, v in effective_state_dict(model).items()}
    _atomic_write(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    text = json.dumps(meta.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    _atomic_write(sidecar, lambda tmp: tmp.write_text(text))
    return weights.with_suffix("")


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as the forward pass sees it, loadable into the unparametrized architecture.

    A parametrized tensor (a pruning mask, a codebook) is stored under its own name with the value
    it computes; its dense `original` and the parametrization's buffers are not stored, so a
    compressed model's checkpoint is never larger than the dense one.
    """
    state = {k: v.detach() for k, v in model.state_dict().items()
             if "parametrizations" not in k.split(".")}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            prefix = f"{name}." if name else ""
            for tensor_name in module.parametrizations:
                state[prefix + tensor_name] = getattr(module, tensor_name).detach()
    return state


def load_checkpoint(path: str | Path) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode)."""
    weights, sidecar = checkpoint_paths(path)
    meta = read_meta(sidecar)
    tensors = read_safetensors(weights)
    c, h, w = meta.input_shape
    model = build_model(meta.model, num_classes=meta.num_classes, in_channels=c, input_size=h)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CorruptFileError(f"{weights}: weights do not fit the architecture in {sidecar.name}"
                               f" ({first})") from None
    return model.eval(), meta


def read_meta(sidecar: Path) -> CheckpointMeta:
    """Parse and validate a checkpoint's JSON sidecar."""
    if not sidecar.is_file():
        raise CorruptFileError(f"{sidecar}: no such checkpoint sidecar (a checkpoint is a"
                               " .safetensors file with a .json beside it)")
    try:
        return CheckpointMeta.model_validate(json.loads(sidecar.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{sidecar}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise CorruptFileError(f"{sidecar}: not a netshrink checkpoint sidecar "
                               f"({_first_error(exc)})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking that it is one; a pickle is refused unread."""
    if not path.is_file():
        raise CorruptFileError(f"{path}: no such checkpoint file")
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        raise CorruptFileError(f"{path}: is a pickle (torch.save) file; netshrink never unpickles."
                               " Save the state dict with safetensors instead")
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if not 0 < header_len <= min(size - 8, _SAFETENSORS_MAX_HEADER) or head[8:9] != b"{":
        raise CorruptFileError(f"{path}: not a safetensors file (bad header)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: corrupt safetensors file ({exc})") from None


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file and rename, so an interrupted save leaves the old file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    return f"{where}: {err['msg']}"

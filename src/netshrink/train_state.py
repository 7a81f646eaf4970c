"""Resumable training: the state of a `fit` run after each epoch, so an interrupted run goes on.

The state is a safetensors file (model, including any parametrization's dense original, and the
optimizer's tensors) plus a JSON sidecar (epoch, scheduler, optimizer groups, history, and the
settings it was made with). Like every file netshrink reads, it is parsed, never unpickled.
"""

import json
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, CorruptFileError
from .files import atomic_write, read_safetensors, write_safetensors


def state_paths(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_train_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    epoch: int,
    history: list[dict],
    settings: dict,
) -> None:
    """Write the state after `epoch` epochs; each file is replaced atomically."""
    weights, sidecar = state_paths(path)
    opt = optimizer.state_dict()
    tensors = {f"model/{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    scalars: dict[str, dict] = {}
    for index, slots in opt["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{slot}"] = value.contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[slot] = value
    meta = {
        "epoch": epoch,
        "settings": settings,
        "history": history,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict(),
    }
    weights.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(weights, tensors)
    atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps(meta)))


def load_train_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, settings: dict
) -> tuple[int, list[dict]]:
    """Restore a saved state into model, optimizer and scheduler; returns (epochs done, history).

    A state made with other settings raises ConfigError rather than silently mixing two runs.
    """
    weights, sidecar = state_paths(path)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{sidecar}: unreadable training state ({exc})") from None
    if meta.get("settings") != settings:
        raise ConfigError(
            f"{sidecar} was saved by a run with other settings: delete it to start"
            " afresh, or run with the same settings to resume"
        )
    tensors = read_safetensors(weights)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, slot = key.split("/", 2)
            state.setdefault(int(index), {})[slot] = value
    for index, slots in meta["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    return meta["epoch"], meta["history"]


def clear_train_state(path: Path) -> None:
    """Remove a finished run's state."""
    for p in state_paths(path):
        p.unlink(missing_ok=True)

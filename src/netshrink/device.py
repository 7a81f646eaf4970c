"""Where the computation runs: a device name checked once, and the rule that data follow the model.

A method computes on the device its model is on: `fit`, `evaluate`, calibration, the bit-width
search, sensitivity and distillation move each batch to the model's device (`to_model`), so a
user who calls `model.to("cuda")` gets a CUDA run, and `--device` / a recipe's `device:` / a
`device=` argument is that one move, made before the work starts. What must be bit-exact (the
integer path, packing, the exports) runs on the CPU, on a copy.

    >>> resolve_device("auto")        # CUDA when present, else the CPU
    device(type='cpu')
"""

import os
import re

import torch
from torch import nn

from .errors import ConfigError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


def check_device_name(name: str) -> str:
    """`name` if it is one netshrink knows (not whether this machine has it); ConfigError
    otherwise. Recipes validate with it, so a typo fails before any work."""
    if not isinstance(name, str) or not _PATTERN.fullmatch(name):
        raise ConfigError(f"unknown device {name!r}: use {DEVICE_NAMES}")
    return name


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device `name` means on this machine: "auto" (or None) is CUDA when there is
    one, else the CPU; under torchrun "cuda" is the process's own GPU (LOCAL_RANK). A CUDA or
    MPS device this machine lacks is a ConfigError in one line (the CLI exits 2), never a
    fall-back that would quietly train on the CPU."""
    if isinstance(name, torch.device):
        name = str(name)
    name = check_device_name("auto" if name is None else name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU a process
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(
                f"device {name!r}: this machine has no CUDA device (or this torch build has no "
                "CUDA); use --device cpu, or auto"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here; use --device cpu")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model with none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` on `device`; the copy overlaps compute when `x` sits in pinned memory."""
    return x.to(device, non_blocking=x.device.type == "cpu" and device.type == "cuda")


def to_model(model: nn.Module, *tensors: torch.Tensor):
    """The tensors on the model's device: the one line each data-consuming loop starts with."""
    device = model_device(model)
    moved = tuple(to_device(t, device) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


def place(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    """`model` moved to `device` when one is given (None keeps it where it is); returns it."""
    return model if device is None else model.to(resolve_device(device))

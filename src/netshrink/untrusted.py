"""What an untrusted file may make netshrink allocate, and the model built on the `meta` device
before the real one (DESIGN.md, "Files are untrusted"; docs/format.md, "Checks and limits").

A file states sizes: tensor shapes, stream counts, a model's arguments, structural edits. None
of them sizes an allocation until it is checked against what the file holds:

- the decoded tensors, the decoders' working arrays and the model together fit a budget that
  grows with the file's size (`DECODED_FLOOR + EXPANSION * file size`) and stops at an absolute
  cap, `MAX_DECODED_BYTES` unless the caller raises it (`max_decoded_bytes=`, `--max-decoded`);
- the architecture is built and its edits replayed on the meta device first (shapes, no
  memory), and its state must be exactly the tensors the file stores before it is built again
  for real. Whatever a factory or torch raises on a file's values there is the file's fault.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated

import torch
from pydantic import BeforeValidator, Field
from torch import nn

from .errors import ConfigError, CorruptFileError, Error, LimitError, UnsupportedLayerError

# Decoded bytes (tensors + working arrays + model) may be at most DECODED_FLOOR plus EXPANSION
# bytes per byte of file: generous for any real model (a fully pruned layer codes to almost
# nothing), fatal to a forged header that claims gigabytes from a few kilobytes.
DECODED_FLOOR = 64 << 20
EXPANSION = 4096
MAX_DECODED_BYTES = 2 << 30  # the absolute default cap, whatever the file's size
# The data arguments a model is built from, bounded in every file (.nsk header, checkpoint
# sidecar); the meta-device build checks the rest.
MAX_CLASSES = 1 << 20
MAX_INPUT_SIDE = 1 << 14
ClassCount = Annotated[int, Field(ge=1, le=MAX_CLASSES)]
InputShape = tuple[
    Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)],
    Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)],
    Annotated[int, Field(ge=1, le=MAX_INPUT_SIDE)],
]
MAX_SIDECAR_BYTES = 4 << 20  # a checkpoint's JSON sidecar, read whole: the .nsk header's cap


def at_most(count: int) -> BeforeValidator:
    """A list field's length bound checked before its items are validated (pydantic's
    `max_length` counts after, so a file listing a million records costs their validation)."""

    def check(value):
        if isinstance(value, list) and len(value) > count:
            raise ValueError(f"at most {count} items, not {len(value)}")
        return value

    return BeforeValidator(check)


# What torch and model factories raise when handed sizes they cannot build; on the meta device
# nothing else of the user's can fail, so each of these means the file's values are wrong.
BUILD_ERRORS = (
    RuntimeError, TypeError, ValueError, AttributeError, IndexError, KeyError, LookupError,
    OverflowError, MemoryError, NotImplementedError, ZeroDivisionError, RecursionError,
    AssertionError,
)  # fmt: skip


def decode_budget(file_size: int, max_decoded_bytes: int | None = MAX_DECODED_BYTES) -> int:
    """The bytes that decoding a `file_size`-byte file may take; None lifts the absolute cap."""
    proportional = DECODED_FLOOR + EXPANSION * file_size
    return proportional if max_decoded_bytes is None else min(proportional, max_decoded_bytes)


def check_budget(needed: int, budget: int, where: str, what: str) -> None:
    """Raise LimitError when `needed` bytes (for `what`, the field that sized them) exceed the
    budget, saying how to raise the cap for a file the user trusts."""
    if needed > budget:
        raise LimitError(
            f"{where}: {what} would take {needed:,} bytes, over this file's decode budget of "
            f"{budget:,}; if you trust the file, raise the cap (max_decoded_bytes=, "
            "--max-decoded MB)"
        )


def build_skeleton(
    build: Callable[[], nn.Module],
    edits: Sequence,
    where: str,
    field: str,
    *,
    replay: Callable[[nn.Module, Sequence], nn.Module],
) -> nn.Module:
    """`build()` and the structural edits replayed on the meta device: the architecture a file
    describes, without allocating it. A failure is CorruptFileError naming `field`.

    `replay` is netshrink.replay.replay_edits, passed in by the caller: the replay sits above
    the method families, and this module below them (the codec and checkpoints import it)."""
    with torch.device("meta"):
        try:
            model = build()
        except Error:
            raise
        except BUILD_ERRORS as exc:
            raise CorruptFileError(
                f"{where}: {field} does not build a model ({_first(exc)}); netshrink builds a "
                "file's model on PyTorch's meta device first to check its size, so a factory of "
                'your own must also build under `with torch.device("meta")`'
            ) from None
        try:
            return replay(model, edits)
        except (ConfigError, UnsupportedLayerError) as exc:
            raise CorruptFileError(f"{where}: its structural edits do not fit ({exc})") from None
        except BUILD_ERRORS as exc:
            raise CorruptFileError(f"{where}: its structural edits fail ({_first(exc)})") from None


def model_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take once built for real."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def check_skeleton(skeleton: nn.Module, stored: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Raise CorruptFileError unless the meta model's state is exactly the stored tensors:
    the same names and shapes (the model's size is what the file holds, not what it claims)."""
    try:
        expected = effective_shapes(skeleton)
    except BUILD_ERRORS as exc:
        raise CorruptFileError(f"{where}: its model has no state ({_first(exc)})") from None
    problem = _mismatch(expected, stored)
    if problem:
        raise CorruptFileError(
            f"{where}: the stored tensors do not fit the architecture ({problem})"
        )


def effective_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The names and shapes of `checkpoint.effective_state_dict(model)`, without computing it.

    A parametrized tensor is stored under its own name with its parametrization's value; every
    netshrink parametrization (mask, codebook, fixed-point grid) keeps its tensor's shape, so
    that is `original`'s shape. Running the parametrizations on the meta device instead cost
    most of a decode (fake quantization through torch's decompositions); a parametrization that
    did change a shape is still caught when the real model loads the tensors strictly.
    """
    shapes = {}
    for key, value in model.state_dict(keep_vars=True).items():
        parts = key.split(".")
        if "parametrizations" not in parts:
            shapes[key] = tuple(value.shape)
            continue
        i = parts.index("parametrizations")  # owner.parametrizations.weight.original
        if parts[i + 2 :] == ["original"]:
            shapes[".".join(parts[:i] + [parts[i + 1]])] = tuple(value.shape)
    return shapes


def _mismatch(expected: Mapping[str, tuple], stored: Mapping[str, tuple]) -> str | None:
    for name in sorted(expected.keys() - stored.keys()):
        return f"the model needs tensor {name}, which the file lacks"
    for name in sorted(stored.keys() - expected.keys()):
        return f"tensor {name} is not part of the model the file names"
    for name, shape in expected.items():
        if tuple(stored[name]) != shape:
            return f"tensor {name} is stored as {tuple(stored[name])}, the model's is {shape}"
    return None


def _first(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"

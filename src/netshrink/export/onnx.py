"""fp32 ONNX export of the effective model, run by ONNX Runtime (the deployment stage of Kim et al.).

What is exported is what the forward pass computes: a copy of the model in eval mode with every
parametrization (pruning masks, codebooks, fixed-point grids) removed and its value kept, so the
graph holds plain weights and a pruned weight is an exact zero in its initializer. The caller's
model is never changed.

    >>> path = export_onnx(model, "model.onnx", (1, 28, 28))
    >>> agreement = compare_onnx(model, onnx_session(path), splits.loader("test", 256))
"""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, CorruptFileError, UnsupportedLayerError
from ..files import atomic_write
from ..layers import copy_model, unwrap
from ..mask import unparametrize
from .onnx_pools import exact_pools, pools_exported

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The legacy (TorchScript) exporter announces its own deprecation on every call; netshrink picks
# it on purpose (one self-contained file, constant-folded BatchNorm), so users need not see that.
_EXPORTER_NOISE = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
)
SESSION_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
)


@dataclass(frozen=True)
class OnnxAgreement:
    """How ONNX Runtime's logits compare with PyTorch's over a loader: the fraction of images whose
    argmax agrees, the largest absolute logit difference, the image count, and ONNX Runtime's
    top-1 accuracy against the labels."""

    top1_agreement: float
    max_abs_diff: float
    count: int
    top1: float


def effective_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode with every parametrization removed, its computed value
    kept as a plain tensor; the original keeps its parametrizations (see `unparametrize`)."""
    plain = copy_model(unwrap(model)).eval()
    for module in plain.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                unparametrize(module, name)
    return plain


def export_onnx(
    model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], *, opset: int = 17
) -> Path:
    """Write the effective `model` to `path` as one self-contained fp32 ONNX file; returns the path.

    Input "input" [batch, *input_shape] and output "logits" [batch, classes], batch dynamic;
    where torch can export the model only for a fixed batch (a kernel size read from the
    input's shape, as CBAM's channel gate does), batch 1, with a StaticBatchWarning and the
    file's doc_string saying why. Uses the TorchScript exporter (`dynamo=False`), which folds
    BatchNorm into the convolutions; pools take PyTorch's windows and divide as it does under
    every ONNX Runtime kernel (exact_pools; divisor_override and adaptive windows that do not
    tile the input too: pools_exported); the file is checked with
    `onnx.checker.check_model(full_check=True)` before it replaces anything at `path`. Raises
    UnsupportedLayerError when an operation cannot be exported.

    Example:
        >>> export_onnx(prune_magnitude(lenet5(), config), "lenet5.onnx", (1, 28, 28))
        PosixPath('lenet5.onnx')
    """
    path = Path(path)
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ConfigError(f"input_shape must be (channels, height, width), got {input_shape!r}")
    plain = effective_copy(model)
    # batch 2, not 1: a traced size-1 dimension is easy to specialise into the graph
    example = torch.zeros(2, *(int(d) for d in input_shape), device=_device(plain))
    atomic_write(path, lambda tmp: _export_checked(plain, example, tmp, opset))
    return path


def _export_checked(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """Export `model` to `path` with a dynamic batch axis, or with a fixed batch of 1 where only
    the dynamic axis fails (the file says why, and so does a StaticBatchWarning); then make its
    pools exact (exact_pools) and check it. Raises UnsupportedLayerError naming the cause when
    the static export fails too."""
    try:
        with _torch_graph_dump_silenced():
            _torch_export(model, example, path, opset, dynamic=True)
        note = None
    except _FAILURES as exc:
        # A size read from the input (CBAM's avg_pool2d(x, x.size()[2:])) is a constant in a
        # static trace but a graph value under a dynamic axis, where ONNX needs an attribute:
        # a file for batch 1 serves the user better than no file.
        dynamic_cause = _cause(exc)
        try:
            _torch_export(model, example[:1], path, opset, dynamic=False)
        except _FAILURES as static_exc:
            raise _unsupported(model, opset, static_exc) from static_exc
        note = (
            "takes a batch of 1 only: torch cannot export it with a dynamic batch axis, as "
            + dynamic_cause
        )
    try:
        proto = exact_pools(onnx.load(str(path)))
        if note is not None:
            proto.doc_string = note
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path), full_check=True)
    except _CHECK_ERRORS as exc:
        raise _unsupported(model, opset, exc) from exc
    if note is not None:
        message = f"the exported ONNX file {note}; onnx_logits runs it image by image"
        warnings.warn(message, StaticBatchWarning, 2)


class StaticBatchWarning(UserWarning):
    """An ONNX file was exported for a batch of 1 only (the message says why); onnx_logits runs
    it one image at a time."""


_EXPORT_ERRORS = (RuntimeError, TypeError, ValueError, onnx.checker.ValidationError)
_FAILURES = (UnsupportedLayerError, *_EXPORT_ERRORS)
# what onnx.checker raises on a file whose shapes do not add up (full_check)
_CHECK_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def _torch_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int, *, dynamic):
    """torch.onnx.export with netshrink's names, the batch axis dynamic or not."""
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad(), pools_exported(opset):
        for message in _EXPORTER_NOISE:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
        )


@contextlib.contextmanager
def _torch_graph_dump_silenced():
    """Keep torch's exporter from printing its whole graph to stdout (from C++, so at the file
    descriptor) when the export fails: for the dynamic attempt, which the static one may
    replace, that dump would read as an error the user has to act on."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        if sys.stdout is not None:
            sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _cause(exc: Exception) -> str:
    """One line on why torch could not export: its first line, or for a value that must be
    constant (torch's SymbolicValueError), which source line computes it."""
    text = " ".join(str(exc).split())
    found = re.search(r"# (\S+?):(\d+):\d+ .*? because it is not constant", text)
    if found:
        line = linecache.getline(found[1], int(found[2])).strip()  # fx code is in linecache too
        quoted = f"`{line[:100]}` at " if line else ""
        return (
            f"a value computed from the input's shape ({quoted}{found[1]}:{found[2]}) is used "
            "where ONNX needs a constant (a kernel size, a stride)"
        )
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _unsupported(model: nn.Module, opset: int, exc: Exception) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"cannot export {type(model).__name__} to ONNX opset {opset}: {_cause(exc)}. Replace or "
        "remove the layer that uses this operation, or try another opset"
    )


def onnx_session(path: str | Path, *, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU for the file at `path`, all graph optimisations on.

    `threads` sets the intra-op thread count (None: ONNX Runtime's default, one per core).
    Raises CorruptFileError, naming the path, when the file is missing or not a valid model.

    Example:
        >>> onnx_session("lenet5.onnx", threads=1).get_inputs()[0].name
        'input'
    """
    path = Path(path)
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
    ):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    if not path.is_file():
        raise CorruptFileError(f"{path}: no such ONNX file; export one with export_onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except SESSION_ERRORS as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise CorruptFileError(
            f"{path}: not a valid ONNX model ({first}); export it again with export_onnx"
        ) from None


def onnx_logits(session: ort.InferenceSession, x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Run `session` on one batch `x` [batch, C, H, W]; returns the logits as float32 numpy."""
    return onnx_outputs(session, x)[0]


def onnx_outputs(session: ort.InferenceSession, x: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """Every output of `session` on the batch `x`, as float32 numpy. A file exported for a fixed
    batch (export_onnx's fallback to batch 1) runs on slices of that size, the last one padded
    with zeros and its outputs trimmed, so callers need not know."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    name, fixed = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    if not isinstance(fixed, int) or fixed == len(x) or not len(x):
        return session.run(None, {name: x})
    parts = []
    for start in range(0, len(x), fixed):
        part = x[start : start + fixed]
        full = np.concatenate([part, np.zeros((fixed - len(part), *x.shape[1:]), x.dtype)])
        parts.append([out[: len(part)] for out in session.run(None, {name: full})])
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def compare_onnx(
    model: nn.Module,
    session: ort.InferenceSession,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> OnnxAgreement:
    """Run `model` (in eval mode, restored afterwards) and `session` on every (x, y) batch of
    `loader` and compare: top-1 agreement, max |logit difference|, ONNX Runtime's top-1.

    Example:
        >>> compare_onnx(model, onnx_session(path), splits.loader("test", 256)).top1_agreement
        1.0
    """
    was_training, device = model.training, _device(model)
    model.eval()
    agree = correct = seen = 0
    max_diff = 0.0
    try:
        with torch.no_grad():
            for x, y in loader:
                expected = model(x.to(device)).float().cpu().numpy()
                got = onnx_logits(session, x)
                max_diff = max(max_diff, float(np.abs(got - expected).max(initial=0.0)))
                agree += int((got.argmax(1) == expected.argmax(1)).sum())
                correct += int((got.argmax(1) == y.cpu().numpy()).sum())
                seen += len(y)
    finally:
        model.train(was_training)
    if not seen:
        raise ConfigError("compare_onnx got an empty loader; give it at least one batch")
    return OnnxAgreement(agree / seen, max_diff, seen, correct / seen)


def _device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")

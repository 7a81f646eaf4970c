"""Measurement: parameters, bytes, MACs and latency, gathered into one `Measurement` a stage.

Counts read the weights that the forward pass uses (a parametrization's output, not its dense
`original`), so a pruned or clustered model is counted as what it computes. MACs are counted by
forward hooks on convolutions and linear layers at batch 1, dense and sparsity-aware.

What a compressed model stores is not estimated here: only the codec knows what a .nsk file
holds, and it sits above this module. Callers pass the file's size in (`measure(...,
size_bytes=...)`, from netshrink.codec's `packed_bytes` or `summarize_model`); without it a
model counts at dense fp32 (`dense_bytes`).
"""

import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .data import BatchLoader
from .device import to_model
from .train import evaluate


@dataclass(frozen=True)
class ParamCount:
    total: int
    nonzero: int


@dataclass(frozen=True)
class LayerMacs:
    """Multiply-accumulates of one layer for one input; `sparse` skips zero weights."""

    name: str
    kind: str
    macs: int
    sparse_macs: int


@dataclass(frozen=True)
class Measurement:
    """What one stage of a pipeline cost and won; every stage fills one and the report prints it.

    `size_bytes` is what the stage stores (the bytes of its .nsk file where the caller packed
    it; dense fp32 otherwise) and `compression_ratio` is relative to the dense baseline's
    bytes.
    """

    stage: str
    top1: float | None
    top5: float | None
    params: int
    nonzero_params: int
    size_bytes: int
    bits_per_weight: float
    compression_ratio: float
    macs: int
    sparse_macs: int
    latency_ms_b1: float | None
    latency_ms_b64: float | None

    def to_json(self) -> dict:
        return asdict(self)


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter as the forward pass sees it.

    A parametrized tensor is evaluated through its parametrization (so `conv1.weight` is the
    masked or clustered weight) and its `original` is skipped.
    """
    for module_name, module in _compute_modules(model):
        prefix = f"{module_name}." if module_name else ""
        for name, value in _own_parameters(module):
            yield prefix + name, value


def _own_parameters(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """A module's own parameters as its forward pass sees them, parametrized ones evaluated."""
    names = set(module._parameters)
    if parametrize.is_parametrized(module):
        names |= set(module.parametrizations.keys())
    for name in sorted(names):
        value = getattr(module, name)
        if isinstance(value, torch.Tensor):
            yield name, value.detach()


def count_parameters(model: nn.Module) -> ParamCount:
    """Total and non-zero parameters as the forward pass sees them."""
    total = nonzero = 0
    for _, tensor in effective_parameters(model):
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return ParamCount(total, nonzero)


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model stored densely at fp32: parameters plus float buffers (BN statistics)."""
    count = sum(t.numel() for _, t in effective_parameters(model))
    for _, module in _compute_modules(model):
        count += sum(
            b.numel() for b in module._buffers.values() if b is not None and b.is_floating_point()
        )
    return 4 * count


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerMacs]:
    """MACs per convolution (grouped and depthwise included) and linear layer, for one input."""
    rows: list[LayerMacs] = []

    def hook(name):
        def record(module, inputs, output):
            weight = module.weight.detach()
            # Each weight is used once per output position: conv at every pixel, linear per token.
            uses = output[0].numel() // (
                module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            )
            rows.append(
                LayerMacs(
                    name,
                    type(module).__name__,
                    weight.numel() * uses,
                    int(torch.count_nonzero(weight)) * uses,
                )
            )

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in _compute_modules(model)
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        _forward_once(model, torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return rows


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 3,
    repeats: int = 20,
) -> float:
    """Median wall time in milliseconds of one forward pass, after warm-up, on `threads` threads."""
    x = torch.randn(batch_size, *input_shape)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        for _ in range(warmup):
            _forward_once(model, x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _forward_once(model, x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 1000 * statistics.median(times)


def simulates_arithmetic(model: nn.Module) -> bool:
    """Whether `model` runs fake quantization (netshrink.quant's ActQuant says so)."""
    return any(getattr(m, "simulates_arithmetic", False) for m in model.modules())


def measure(
    model: nn.Module,
    *,
    stage: str,
    input_shape: tuple[int, ...],
    test: BatchLoader | None = None,
    size_bytes: int | None = None,
    baseline_bytes: int | None = None,
    latency: bool = True,
    threads: int | None = None,
) -> Measurement:
    """Accuracy (when a test loader is given), size, MACs and latency of `model` as one record.

    `size_bytes` defaults to the dense fp32 bytes; `baseline_bytes` (default: the same) is what
    the compression ratio divides. A model that simulates integer arithmetic in float (fake
    quantization: a module with `simulates_arithmetic`) is not timed: its PyTorch latency says
    nothing about a device, whose numbers the exports give (netshrink.deploy).
    """
    latency = latency and not simulates_arithmetic(model)
    accuracy = (
        evaluate(model, test, progress=True, description=f"{stage}: evaluate") if test else None
    )
    params = count_parameters(model)
    size = size_bytes if size_bytes is not None else dense_bytes(model)
    macs = count_macs(model, input_shape)
    return Measurement(
        stage=stage,
        top1=accuracy.top1 if accuracy else None,
        top5=accuracy.top5 if accuracy else None,
        params=params.total,
        nonzero_params=params.nonzero,
        size_bytes=size,
        bits_per_weight=8 * size / max(params.total, 1),
        compression_ratio=(baseline_bytes or size) / size,
        macs=sum(r.macs for r in macs),
        sparse_macs=sum(r.sparse_macs for r in macs),
        latency_ms_b1=measure_latency(model, input_shape, threads=threads) if latency else None,
        latency_ms_b64=(
            measure_latency(model, input_shape, batch_size=64, threads=threads, repeats=10)
            if latency
            else None
        ),
    )


FLOAT_BITS = 32


def deep_compression_rate(n: int, k: int, b: int = FLOAT_BITS) -> float:
    """The compression rate of sharing `n` weights of `b` bits among `k` shared weights,
    `r = n*b / (n*log2(k) + k*b)` (Han et al. 2016, equation 1).

    Example:
        >>> deep_compression_rate(16, 4)  # the paper's 4x4 example: 512 / (32 + 128)
        3.2
    """
    if n < 1 or k < 1 or b < 1:
        raise ValueError(f"n, k and b must be positive, got n={n}, k={k}, b={b}")
    return n * b / (n * math.log2(k) + k * b)


def _compute_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules of the network itself, without the parametrization modules that hang off it."""
    for name, module in model.named_modules():
        if "parametrizations" not in name.split("."):
            yield name, module


def _forward_once(model: nn.Module, x: torch.Tensor) -> None:
    """One forward pass in eval mode on the model's device, finished when it returns (CUDA runs
    asynchronously: without the synchronisation a latency would time the launch only)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x = to_model(model, x)
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
    finally:
        model.train(was_training)

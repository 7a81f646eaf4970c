"""int8 ONNX export of a fixed-point model: a QDQ graph (QuantizeLinear / DequantizeLinear pairs)
whose scales are the model's own power-of-two formats, so that ONNX Runtime runs the quantized
model that netshrink chose rather than quantizing it again.

Each activation quantizer becomes a clip to its format's range and a Q/DQ pair at scale 2**-frac,
zero point 0 (int8, or uint8 for the unsigned formats after a ReLU). Each quantized weight is
exported as a float initializer and a Q/DQ pair, then stored as the integers that feed its
DequantizeLinear (netshrink.export.onnx_int8: the same values, bit for bit), which ONNX Runtime
folds into int8 kernels. By default (`integers="uint8"`) every signed 8-bit value, weights and
activations, is then stored as uint8 at zero point 128 (onnx_int8.unsigned_integers), the same
values: ONNX Runtime's uint8 x uint8 kernels compute them exactly on every CPU, where its
uint8 x int8 kernels saturate on x86 CPUs without VNNI. `integers="int8"` keeps int8, for those
faster kernels on a CPU known to have VNNI or ARM's dot products (bench/deploy.py's ort case
times both files). A weight wider than 8 bits (a pre-activation BatchNorm's 16-bit
per-channel scales, netshrink.fold.batchnorms_as_convs, or `weights` > 8) is stored as INT16
through a DequantizeLinear, which needs opset 21: such a file is converted to it, and ONNX Runtime
runs that layer in float on the exact grid values. (Left a float initializer, ONNX Runtime's
optimizer quantizes it again to int8, off its grid, to fuse the layer; that is what happens
where ONNX Runtime cannot open the opset-21 file and the export keeps the float weight.) Biases
stay float: an int32 bias takes the same four bytes, and ONNX Runtime adds it to its int32
accumulator itself.

Two differences from the integer path remain, both documented and measured rather than hidden:
ONNX rounds ties to even (the integer path rounds them up, unless the model was quantized with
`ties="even"`: then they agree), and an average pool divides in float before it rounds.
Activations wider than 8 bits have no int8 form: they raise UnsupportedLayerError.
"""

from pathlib import Path
from typing import Literal, get_args

import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, UnsupportedLayerError
from ..files import atomic_write
from ..quant.fixed import FixedPoint
from ..quant.quantize import fixed_point_formats
from .onnx import SESSION_ERRORS, _device, _export_checked, effective_copy
from .onnx_int8 import (
    integer_weights,
    quantize_after_reshapes,
    unsigned_integers,
    wide_weights_as_int16,
)


class _QdqActivation(nn.Module):
    """Clip to the format, then QuantizeLinear / DequantizeLinear at scale 2**-frac."""

    def __init__(self, fmt: FixedPoint) -> None:
        super().__init__()
        self.fmt = fmt
        self.low, self.high = (-128, 127) if fmt.signed else (0, 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.fmt.qmin, self.fmt.qmax) != (self.low, self.high):  # a narrower format
            x = x.clamp(self.fmt.qmin * self.fmt.step, self.fmt.qmax * self.fmt.step)
        return torch.fake_quantize_per_tensor_affine(x, self.fmt.step, 0, self.low, self.high)


class _QdqWeight(nn.Module):
    """The weight, already on its grid, through a Q/DQ pair so the graph carries it as int8."""

    def __init__(self, fmt: FixedPoint) -> None:
        super().__init__()
        self.step = fmt.step

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(weight, self.step, 0, -128, 127)


Integers = Literal["uint8", "int8"]  # the type a file stores its signed 8-bit values in
INTEGER_TYPES = get_args(Integers)


def export_onnx_int8(
    qmodel: nn.Module,
    path: str | Path,
    input_shape: tuple[int, int, int],
    *,
    opset: int = 17,
    integers: Integers = "uint8",
) -> Path:
    """Write the fixed-point `qmodel` (netshrink.quant.quantize) to `path` as an int8 QDQ ONNX
    file with its own power-of-two scales; returns the path. Input "input" (float, normalized
    images), output "logits" (float), batch dynamic (or 1, where export_onnx falls back to it,
    saying why). `opset`: the exporter's; a file with weights wider than 8 bits is converted to
    opset 21 (INT16 DequantizeLinear). `integers`: the type of the signed 8-bit values (module
    docstring: uint8 is exact on every CPU). Pools take PyTorch's windows and average pools
    divide as PyTorch's do, also in ONNX Runtime's fused int8 kernel
    (netshrink.export.onnx_pools.exact_pools).

    Example:
        >>> export_onnx_int8(quantize(model, data), "lenet5.int8.onnx", (1, 28, 28))
        PosixPath('lenet5.int8.onnx')
    """
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ConfigError(f"input_shape must be (channels, height, width), got {input_shape!r}")
    if integers not in INTEGER_TYPES:
        raise ConfigError(f"integers must be one of {INTEGER_TYPES}, got {integers!r}")
    formats = fixed_point_formats(qmodel)
    wide = [n for n, s in formats.activations.items() if s.bits > 8]
    if wide:
        raise UnsupportedLayerError(
            f"int8 QDQ holds activations of at most 8 bits; {', '.join(wide)} use more: "
            "quantize with --activations <= 8, or export fp32 ONNX"
        )
    plain = effective_copy(qmodel)
    for name, spec in formats.activations.items():
        plain.set_submodule(name, _QdqActivation(FixedPoint(spec.bits, spec.frac, spec.signed)))
    for name, spec in formats.weights.items():
        if spec.bits > 8:  # e.g. a pre-activation BatchNorm's 16-bit scales: torch exports no
            continue  # wider Q/DQ pair; wide_weights_as_int16 stores them after the export
        fmt = FixedPoint(spec.bits, spec.frac, spec.signed)
        parametrize.register_parametrization(plain.get_submodule(name), "weight", _QdqWeight(fmt))
    plain.recompile()
    path = Path(path)
    example = torch.zeros(2, *(int(d) for d in input_shape), device=_device(plain))
    int16 = {f"{n}.weight": s.frac for n, s in formats.weights.items() if s.bits > 8}
    unsigned = integers == "uint8"
    atomic_write(
        path, lambda tmp: _export_integer_weights(plain, example, tmp, opset, int16, unsigned)
    )
    return path


def _export_integer_weights(
    plain, example, path: Path, opset: int, int16: dict[str, int], unsigned: bool
) -> None:
    """Export and check, then store each quantized weight as integers (`int16`: the wide
    weights' initializers and fractional lengths; `unsigned`: 8-bit values as uint8) and check
    again."""
    _export_checked(plain, example, path, opset)
    model = quantize_after_reshapes(integer_weights(onnx.load(str(path))))
    if unsigned:
        model = unsigned_integers(model)
    if int16:
        wide = wide_weights_as_int16(_copy(model), int16)
        # ONNX Runtime 1.32's QDQ optimizer can insert a QuantizeLinear that its own opset-21
        # type check refuses (onnxruntime#25526; GoogLeNet's branch pools): keep float then.
        model = wide if _loads_in_onnx_runtime(wide) else model
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _loads_in_onnx_runtime(model: onnx.ModelProto) -> bool:
    """Whether ONNX Runtime opens `model` with every graph optimisation on (as onnx_session)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except SESSION_ERRORS:
        return False
    return True

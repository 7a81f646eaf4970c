"""int8 ONNX export of a fixed-point model: a QDQ graph (QuantizeLinear / DequantizeLinear pairs)
whose scales are the model's own power-of-two formats, so that ONNX Runtime runs the quantized
model that netshrink chose rather than quantizing it again.

Each activation quantizer becomes a clip to its format's range and a Q/DQ pair at scale 2**-frac,
zero point 0 (int8, or uint8 for the unsigned formats after a ReLU); each quantized weight a Q/DQ
pair on its initializer, which ONNX Runtime folds into int8 kernels. Biases stay float: ONNX
Runtime adds them to its int32 accumulator itself. Two differences from the integer path remain,
both documented and measured rather than hidden: ONNX rounds ties to even (the integer path rounds
them up, unless the model was quantized with `ties="even"`: then they agree), and an average pool
divides in float before it rounds. Activations wider than 8 bits
have no int8 form: they raise UnsupportedLayerError. A weight wider than 8 bits (a pre-activation
BatchNorm's 16-bit per-channel scales, netshrink.fold.batchnorms_as_convs) stays a float
initializer, exact on its grid, and ONNX Runtime runs that one layer in float.
"""

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, UnsupportedLayerError
from ..files import atomic_write
from ..quant.fixed import FixedPoint
from ..quant.quantize import fixed_point_formats
from .onnx import _device, _export_checked, effective_copy


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


def export_onnx_int8(
    qmodel: nn.Module, path: str | Path, input_shape: tuple[int, int, int], *, opset: int = 17
) -> Path:
    """Write the fixed-point `qmodel` (netshrink.quant.quantize) to `path` as an int8 QDQ ONNX
    file with its own power-of-two scales; returns the path. Input "input" (float, normalized
    images), output "logits" (float), batch dynamic.

    Example:
        >>> export_onnx_int8(quantize(model, data), "lenet5.int8.onnx", (1, 28, 28))
        PosixPath('lenet5.int8.onnx')
    """
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ConfigError(f"input_shape must be (channels, height, width), got {input_shape!r}")
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
        if spec.bits > 8:  # e.g. a pre-activation BatchNorm's 16-bit scales: kept as float
            continue  # initializers, exact on their grid; ORT runs that layer in float
        fmt = FixedPoint(spec.bits, spec.frac, spec.signed)
        parametrize.register_parametrization(plain.get_submodule(name), "weight", _QdqWeight(fmt))
    plain.recompile()
    path = Path(path)
    example = torch.zeros(2, *(int(d) for d in input_shape), device=_device(plain))
    atomic_write(path, lambda tmp: _export_checked(plain, example, tmp, opset))
    return path

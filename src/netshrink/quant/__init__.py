"""Dynamic fixed point (Ristretto; Al-Hami et al.; Kim et al.): formats, range calibration,
batch-norm folding, the fake-quantized model, its bit-exact integer path, the automatic
bit-width search and quantization-aware training."""

from ..fold import fold_batchnorm
from .calibrate import CalibrationMethod, RangeObserver
from .fixed import FixedPoint, fake_quantize, frac_for_range
from .fixed import quantize as quantize_tensor
from .integer import IntegerModel, IntegerOutput
from .modules import ActQuant, WeightQuant
from .quantize import (
    QuantConfig,
    fixed_point_formats,
    is_quantized,
    quantize,
    reestimate_weight_formats,
    set_bits,
)

__all__ = [
    "ActQuant",
    "CalibrationMethod",
    "FixedPoint",
    "IntegerModel",
    "IntegerOutput",
    "QuantConfig",
    "RangeObserver",
    "WeightQuant",
    "fake_quantize",
    "fixed_point_formats",
    "fold_batchnorm",
    "frac_for_range",
    "is_quantized",
    "quantize",
    "quantize_tensor",
    "reestimate_weight_formats",
    "set_bits",
]

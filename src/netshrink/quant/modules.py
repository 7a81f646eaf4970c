"""The fixed-point model's two pieces (DESIGN.md, "compression as parametrizations"):

- `WeightQuant`, a parametrization: `weight = to_grid(weight, bits, frac)` with a
  straight-through gradient, so the dense tensor underneath keeps training (QAT);
- `ActQuant`, a module inserted after a layer: its output on the activation grid, visible in
  `print(model)`. While `observer` is set it only watches the values pass (calibration).

`ActQuant.statistics` keeps what calibration saw (a histogram, not the values), so that a new bit
width can be given without calibrating again (netshrink.quant.quantize.set_bits); it is not
stored in checkpoints. Both round to nearest (ties up) in eval mode; `rounding="stochastic"` applies in training only.
"""

import torch
from torch import nn

from .calibrate import RangeObserver
from .fixed import (
    FixedPoint,
    Rounding,
    fake_quantize,
    from_integers,
    requantize,
)


class WeightQuant(nn.Module):
    """`weight = quantize(weight, fmt)` with the clipped straight-through gradient."""

    def __init__(self, fmt: FixedPoint, rounding: Rounding = "nearest") -> None:
        super().__init__()
        self.fmt = fmt
        self.rounding = rounding

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight, self.fmt, self.rounding if self.training else "nearest")

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        # Loading a stored weight: it is already on the grid, so it is its own preimage.
        return value

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}"


class ActQuant(nn.Module):
    """An activation quantizer: its input rounded onto `fmt` and saturated.

    After an average pool (`divisor` n > 1, input on the grid 2**-input_frac) the pool's sum is
    recovered exactly, `round(x * n * 2**input_frac)`, and divided with the integer path's
    rounding (netshrink.quant.fixed.requantize), so that float and integer models agree even
    when the float division by n is inexact. Where the pool's windows hold different numbers of
    values, `divisors` holds n for each output position ([height, width], broadcast over the
    batch and channels), made from `pool_input` (netshrink.quant.plan.window_divisors).
    """

    simulates_arithmetic = True  # in float: netshrink.measure does not time such a model

    def __init__(
        self,
        fmt: FixedPoint | None,
        *,
        divisor: int = 1,
        input_frac: int | None = None,
        rounding: Rounding = "nearest",
    ) -> None:
        super().__init__()
        self.fmt = fmt
        self.divisor = divisor
        self.input_frac = input_frac
        self.pool_input: tuple[int, int] | None = None
        self.register_buffer("divisors", None, persistent=False)
        self.rounding = rounding
        self.observer: RangeObserver | None = None  # set while calibrating
        self.statistics: RangeObserver | None = None  # what calibration saw, for new bit widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.observe(x)
            return x
        if self.fmt is None:
            raise RuntimeError("this ActQuant has no format yet: calibrate the model first")
        if not self.divides or self.input_frac is None or torch.onnx.is_in_onnx_export():
            # (ONNX: the pool's float average rounded directly; equal except at rare ties)
            return fake_quantize(x, self.fmt, self.rounding if self.training else "nearest")
        return _straight_through(x, self._divided(x.detach()), self.fmt)

    @property
    def divides(self) -> bool:
        """Whether it divides an average pool's sums (by `divisor`, or by `divisors`)."""
        return self.divisors is not None or self.divisor > 1

    @property
    def pool_divisor(self) -> int | torch.Tensor:
        """What each value is divided by: `divisor`, or `divisors` a position."""
        return self.divisors if self.divisors is not None else self.divisor

    def _divided(self, x: torch.Tensor) -> torch.Tensor:
        divisor = self.pool_divisor
        sums = torch.round(x.double() * divisor * 2.0**self.input_frac).long()
        q = requantize(sums, self.input_frac, self.fmt, divisor)
        return from_integers(q, self.fmt, x.dtype)

    def extra_repr(self) -> str:
        text = f"fmt={self.fmt}"
        if self.divisors is not None:
            text += f", divisors per position for a {self.pool_input} input"
        elif self.divisor > 1:
            text += f", divisor={self.divisor}"
        if self.divides:
            text += f", input_frac={self.input_frac}"
        return text


def _straight_through(x: torch.Tensor, value: torch.Tensor, fmt: FixedPoint) -> torch.Tensor:
    # Forward: `value`; backward: the gradient of x, zeroed where the format saturates.
    inside = ((x >= fmt.qmin * fmt.step) & (x <= fmt.qmax * fmt.step)).to(x.dtype)
    return x * inside + (value - x * inside).detach()

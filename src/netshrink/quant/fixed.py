"""Dynamic fixed point: a number is a B-bit integer q times 2**-FL (Ristretto, Gysel et al. 2016;
Al-Hami et al.; Kim et al.), so a device needs only integer multiply-add and shifts.

`FixedPoint(bits, frac, signed)` is one format; `frac_for_range` picks FL from a dynamic range as
Ristretto does (integer length IL = ceil(log2(max|x|)) + 1 for signed numbers, the extra bit
being the sign; FL = B - IL). FL may be negative (a coarse grid for large numbers) or exceed B
(small numbers).

Rounding. "nearest" rounds ties toward +infinity by default: q = floor(x * 2**FL + 1/2). It is
the rounding of the integer requantization `(acc + (1 << (s - 1))) >> s` with an arithmetic
shift, which is what a device does, so the float model and the integer path agree exactly, ties
included. A format with `ties="even"` rounds them to the even integer instead, as ONNX Runtime's
QuantizeLinear (and IEEE arithmetic) does: the float model, the integer path and the C code then
all do so, and an int8 ONNX file agrees with them at ties too.
"stochastic" rounds up with probability equal to the fraction (Gupta et al. 2015), for training.
Values beyond the grid saturate to the largest / smallest integer.

`fake_quantize` is the straight-through version: forward on the grid, gradient passed unchanged
inside the representable range and zero outside it (the clipped STE of QAT).
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch

Rounding = Literal["nearest", "stochastic"]
Ties = Literal["up", "even"]


@dataclass(frozen=True)
class FixedPoint:
    """`bits`-bit integers (two's complement when `signed`) scaled by 2**-frac."""

    bits: int
    frac: int
    signed: bool = True
    ties: Ties = "up"  # where round-to-nearest sends a value halfway between two integers

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 32 or (self.signed and self.bits < 2):
            raise ValueError(f"a fixed-point format needs 2..32 bits (1..32 unsigned), not {self}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def step(self) -> float:
        return 2.0**-self.frac

    @property
    def max_value(self) -> float:
        return self.qmax * self.step

    def __str__(self) -> str:
        return f"{'' if self.signed else 'u'}{self.bits}.{self.frac}"


def frac_for_range(max_abs: float, bits: int, signed: bool = True) -> int:
    """Ristretto's fractional length for values up to `max_abs`: FL = B - IL with
    IL = ceil(log2(max_abs)) (+1 for the sign bit). Zero or non-finite ranges get FL = B - 1."""
    if not math.isfinite(max_abs) or max_abs <= 0:
        return bits - 1
    integer_bits = math.ceil(math.log2(max_abs)) + (1 if signed else 0)
    return bits - integer_bits


def format_for(x: torch.Tensor, bits: int, signed: bool = True) -> FixedPoint:
    """The format of `bits` bits that covers max|x| (Ristretto's rule)."""
    max_abs = x.detach().abs().max().item() if x.numel() else 0.0
    return FixedPoint(bits, frac_for_range(max_abs, bits, signed), signed)


def to_integers(x: torch.Tensor, fmt: FixedPoint, rounding: Rounding = "nearest") -> torch.Tensor:
    """The saturated integers q (as x's float dtype) of x in `fmt`."""
    scaled = _scale(x, fmt.frac)
    whole = torch.floor(scaled)
    # Compare the fraction (exact in floating point) rather than add 1/2 or a random number:
    # an addition rounds, and would carry 0.49999997 up, or push a grid value off its grid.
    fraction = scaled - whole
    if rounding == "stochastic":
        up = torch.rand_like(scaled) < fraction
    elif fmt.ties == "even":
        up = (fraction > 0.5) | ((fraction == 0.5) & (torch.remainder(whole, 2) == 1))
    else:
        up = fraction >= 0.5
    return (whole + up.to(whole.dtype)).clamp_(fmt.qmin, fmt.qmax)


def from_integers(q: torch.Tensor, fmt: FixedPoint, dtype=torch.float32) -> torch.Tensor:
    """The values q * 2**-frac (exact in float32 for up to 24-bit q)."""
    return _scale(q.to(dtype), -fmt.frac)


def _scale(x: torch.Tensor, power: int) -> torch.Tensor:
    # x * 2**power, exact: a product by a power of two that is a normal float of x's type (true
    # of any format's 2**frac in float32 / float64) only moves the exponent. The multiply is
    # 2.5x faster than ldexp, and ONNX has no ldexp; narrower types keep ldexp's exact scaling.
    if x.dtype in (torch.float32, torch.float64) or torch.onnx.is_in_onnx_export():
        return x * 2.0**power
    return torch.ldexp(x, torch.tensor(power, dtype=torch.int32))


def quantize(x: torch.Tensor, fmt: FixedPoint, rounding: Rounding = "nearest") -> torch.Tensor:
    """x rounded onto the grid of `fmt` and saturated (no gradient: see fake_quantize)."""
    return from_integers(to_integers(x, fmt, rounding), fmt, x.dtype)


class _FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: FixedPoint, rounding: Rounding) -> torch.Tensor:
        low, high = fmt.qmin * fmt.step, fmt.qmax * fmt.step
        ctx.save_for_backward((x >= low) & (x <= high))
        return quantize(x, fmt, rounding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def fake_quantize(x: torch.Tensor, fmt: FixedPoint, rounding: Rounding = "nearest") -> torch.Tensor:
    """`quantize` with the clipped straight-through estimator: the gradient passes where x is
    inside the format's range and is zero where it saturated."""
    if torch.onnx.is_in_onnx_export():  # an exported graph holds plain ops and no gradient
        return quantize(x, fmt, rounding)
    return _FakeQuantize.apply(x, fmt, rounding)


def requantize(
    q: torch.Tensor, frac: int, fmt: FixedPoint, divisor: int | torch.Tensor = 1
) -> torch.Tensor:
    """Integers q (int64) at scale 2**-frac, divided by `divisor`, moved to `fmt` with the
    rounding of `quantize` and saturated: the integer path's only rescaling step.

    With divisor 1 it is a shift, `(q + (1 << (s - 1))) >> s` for s = frac - fmt.frac > 0 (an
    arithmetic shift floors, so ties go toward +infinity) or `q << -s`. An average pool's divisor
    n is applied by one floor division, floor((q * 2**a + n / 2) / n) with a = fmt.frac - frac,
    written over integers: the one place where a device needs a divide (or a multiply by a
    reciprocal with enough bits). With `fmt.ties == "even"` a tie goes to the even integer.
    """
    shift = frac - fmt.frac
    up, down = max(-shift, 0), max(shift, 0)
    if up:  # a left shift must not wrap in int64: anything this large saturates anyway
        up = min(up, 40)
        q = q.clamp(-(1 << (61 - up)), 1 << (61 - up))
    # a tensor `divisor`: one a position (a pool whose windows differ in size), broadcast
    whole = not isinstance(divisor, torch.Tensor) and divisor == 1
    if fmt.ties == "even" and (down or not whole):
        q = _divide_ties_even(q << up, divisor << down)
    elif whole:
        q = (q + (1 << (down - 1))) >> down if down else q << up
    else:
        q = torch.div(
            (q << (up + 1)) + (divisor << down), (2 * divisor) << down, rounding_mode="floor"
        )
    return q.clamp(fmt.qmin, fmt.qmax)


def _divide_ties_even(numerator: torch.Tensor, denominator) -> torch.Tensor:
    """numerator / denominator rounded to the nearest integer, a tie to the even one (exact)."""
    floor = torch.div(numerator, denominator, rounding_mode="floor")
    twice = 2 * (numerator - floor * denominator)
    return floor + ((twice > denominator) | ((twice == denominator) & (floor % 2 == 1))).long()

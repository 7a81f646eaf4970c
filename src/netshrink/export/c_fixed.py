"""Fixed-point arithmetic of the C export, done at export time on Python integers: the exact range
of every value (a layer's sums; through saturation, ReLUs and requantization), which picks each C
type and leaves out no-op checks; the epilogue that IntegerModel applies after a producer, as C
lines; and C integer literals."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from torch import fx

from ..errors import UnsupportedLayerError
from ..quant.fixed import FixedPoint
from .c_values import Pending, PerPosition

LIMIT = 1 << 62  # every intermediate of the int64 epilogue stays below this


def mac_range(ints: np.ndarray, xlo: int, xhi: int, bias: list[int]) -> tuple[int, int, int]:
    """The exact range of w . x + b over x in [xlo, xhi] (per row, then over rows), and a bound on
    |every partial sum| that picks the accumulator's C type."""
    pos = np.clip(ints, 0, None).sum(1).tolist()
    neg = np.clip(ints, None, 0).sum(1).tolist()
    absolute = np.abs(ints).sum(1).tolist()
    top = max(abs(xlo), abs(xhi))
    lo = min(p * xlo + n * xhi + b for p, n, b in zip(pos, neg, bias))
    hi = max(p * xhi + n * xlo + b for p, n, b in zip(pos, neg, bias))
    return lo, hi, max(a * top + abs(b) for a, b in zip(absolute, bias))


def _rescale(v: int, frac: int, fmt: FixedPoint, divisor: int) -> int:
    # netshrink.quant.fixed.requantize on one Python integer, before saturation
    shift = frac - fmt.frac
    up, down = max(-shift, 0), max(shift, 0)
    if fmt.ties == "even" and (divisor > 1 or down):
        q, r = divmod(v << up, divisor << down)  # floor, as Python's // and %
        return q + (2 * r > divisor << down or (2 * r == divisor << down and q % 2 == 1))
    if divisor == 1:
        return (v + (1 << (shift - 1))) >> shift if shift > 0 else v << -shift
    return ((v << (up + 1)) + (divisor << down)) // ((2 * divisor) << down)


def make_epilogue(name: str, value: Pending, fmt: FixedPoint | None, lo: int, hi: int):
    """What IntegerModel does after a producer: saturate to the accumulator, the ReLUs, then the
    quantizer's requantize. Returns the stored range and a function writing the C lines (on an
    int64_t `v`); checks leave out what the range makes a no-op."""
    lines = []
    for bounds in ((value.saturate,) if value.saturate else ()) + tuple(value.clamps):
        lo, hi = _clamp_lines(lines, lo, hi, *bounds)
    if fmt is not None:
        shift, divisor = value.frac - fmt.frac, value.divisor
        up, down = max(-shift, 0), max(shift, 0)
        # one divisor, or one an output read from a table (PerPosition): d * 2**down as C
        table = isinstance(divisor, PerPosition)
        smallest, largest = (divisor.lo, divisor.hi) if table else (divisor, divisor)
        scaled = (
            (lambda m: f"(int64_t){divisor.table}[{divisor.index}] * {literal(m << down)}")
            if table
            else (lambda m: literal((m * divisor) << down))
        )
        extreme = max(-lo, hi) << (up + 1)
        if extreme + (largest << down) * 2 >= LIMIT:
            raise UnsupportedLayerError(f"{name}: requantization too large for 64-bit integers")
        if fmt.ties == "even" and largest == 1 and shift > 0:  # ties to even, as ONNX Runtime
            lines.append(f"v = ns_shr_even(v, {shift});")
        elif fmt.ties == "even" and (largest > 1 or shift > 0):
            lines.append(f"v = ns_div_even(v * {literal(1 << up)}, {scaled(1)});")
        elif largest > 1:
            num = literal(1 << (up + 1))
            lines.append(f"v = ns_floordiv(v * {num} + {scaled(1)}, {scaled(2)});")
        elif shift > 0:
            lines.append(f"v = ns_shr(v + {literal(1 << (shift - 1))}, {shift});")
        elif shift < 0:
            lines.append(f"v *= {literal(1 << -shift)};")
        # the quotient's extremes: the extreme sums over the smallest or largest divisor
        ends = [_rescale(v, value.frac, fmt, d) for v in (lo, hi) for d in (smallest, largest)]
        lo, hi = _clamp_lines(lines, min(ends), max(ends), fmt.qmin, fmt.qmax)

    def render(indent: int) -> str:
        pad = "    " * indent
        return "".join(f"{pad}{line}\n" for line in lines)

    return lo, hi, render


def _clamp_lines(lines: list[str], lo: int, hi: int, low, high) -> tuple[int, int]:
    if low is not None and lo < low:
        lines.append(f"if (v < {literal(low)}) v = {literal(low)};")
    if high is not None and hi > high:
        lines.append(f"if (v > {literal(high)}) v = {literal(high)};")
    low = lo if low is None else low
    high = hi if high is None else high
    return min(max(lo, low), high), min(max(hi, low), high)


def relu_bounds(
    node: fx.Node, frac: int, divisor: int, ceiling: int | None
) -> tuple[int, int | None]:
    if ceiling is None:
        return 0, None
    if isinstance(divisor, PerPosition):
        raise UnsupportedLayerError(
            f"{node.name}: ReLU6 between an average pool whose windows differ in size and its "
            "quantizer"
        )
    top = Fraction(ceiling * divisor) * Fraction(2) ** frac
    if top.denominator != 1:
        raise UnsupportedLayerError(
            f"{node.name}: ReLU6 at a scale 2**-{frac} where 6 is off the grid"
        )
    return 0, int(top)


def literal(n: int) -> str:
    return str(n) if -(1 << 31) < n < 1 << 31 else f"INT64_C({n})"


def term(expr: str, factor: int) -> str:
    return f"(int64_t){expr}" if factor == 1 else f"(int64_t){expr} * {literal(factor)}"

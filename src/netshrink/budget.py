"""Accuracy budgets: one unit everywhere, percentage points of top-1.

A budget of 1.0 lets a method lose one point (91.0% -> 90.0%), in the CLI (`--budget 1`), in
recipes (`budget: 1.0`) and in Python alike. A value outside 0..100 is refused with the unit in
its message, so that a fraction written by habit (`0.01` for one point) is at least bounded and a
`1.0` meaning "100%" is never read as a fraction.
"""

from typing import Annotated

from pydantic import AfterValidator


def _check_points(value: float) -> float:
    if not 0 <= value <= 100:
        raise ValueError(
            f"a budget is in percentage points of top-1 accuracy, from 0 to 100 (1.0 is one "
            f"point); got {value:g}"
        )
    return value


# A pydantic field type: `budget: Points = 1.0`.
Points = Annotated[float, AfterValidator(_check_points)]


def floor_below(top1: float, budget: float) -> float:
    """The lowest top-1 (a fraction, as `evaluate` gives it) that stays within `budget` points."""
    return top1 - budget / 100

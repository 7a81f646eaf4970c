"""Argument checks shared by every zoo factory, so a bad size or width is a one-line ConfigError."""

from __future__ import annotations

import math

from netshrink.errors import ConfigError


def check_data_args(
    model: str, num_classes: int, in_channels: int, input_size: int, min_size: int = 1
) -> None:
    """Raise ConfigError unless the data-derived arguments are positive ints and the input is large
    enough for ``model``; shared by every zoo factory."""
    for field, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("input_size", input_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{model}: {field} must be a positive integer, got {value!r}")
    if input_size < min_size:
        raise ConfigError(
            f"{model}: input_size={input_size} is too small for this architecture; "
            f"it needs images of at least {min_size}x{min_size} pixels"
        )


def check_width(model: str, width: object) -> float:
    """Return ``width`` as a float, or raise ConfigError unless it is a finite positive number."""
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise ConfigError(f"{model}: width must be a number, got {width!r}")
    if not math.isfinite(width) or width <= 0:
        raise ConfigError(f"{model}: width must be a finite number > 0, got {width!r}")
    return float(width)

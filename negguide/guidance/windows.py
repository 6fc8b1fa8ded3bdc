"""Timestep windows for delayed negatives (Ban et al., ECCV 2024: negatives act late).

A window ``(start, end)`` is given in fractions of the sampling run, 0 = first step, 1 = end of sampling.
Step ``i`` of ``n`` sits at progress ``i / n``; a negative is active at that step when ``start <= i/n < end``
(``end == 1`` includes the last step). Outside its window a negative's weight is 0 and its branch is not computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Window = tuple[float, float]
FULL_WINDOW: Window = (0.0, 1.0)


def validate_window(window, name: str = "window") -> Window:
    """Check one (start, end) pair; return it as floats or raise ValueError naming the problem and the fix."""
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"{name} must be a (start, end) pair of fractions in [0, 1], got {window!r}")
    start, end = window
    for value in (start, end):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} = {window!r} must hold two finite numbers in [0, 1]")
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(
            f"{name} = {window!r} lies outside [0, 1]: give fractions of the sampling run, e.g. (0.3, 1.0)"
        )
    if start > end:
        raise ValueError(f"{name} = {window!r} is reversed: start must not exceed end, e.g. ({end}, {start})")
    return float(start), float(end)


def is_active(window: Window, step_index: int, num_steps: int) -> bool:
    """Whether a branch with this window runs at ``step_index`` (0-based) of ``num_steps``."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    start, end = window
    progress = step_index / num_steps
    if end >= 1.0:
        return progress >= start
    return start <= progress < end


def active_mask(windows: Sequence[Window], step_index: int, num_steps: int) -> list[bool]:
    """One flag per window: which branches the step computes."""
    return [is_active(w, step_index, num_steps) for w in windows]

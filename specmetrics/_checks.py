"""Parameter validation shared by every public function.

All bad-parameter errors raise :class:`ParameterError` with one message format::

    The 'target' parameter of allocate must be in [0, 1). Got 1.2 instead.
"""
from __future__ import annotations

import math
from typing import Any, Iterable


class ParameterError(ValueError):
    """A public function received a parameter it cannot use."""


def fail(name: str, func: str, requirement: str, got: Any) -> ParameterError:
    """Build the standard :class:`ParameterError` (the caller raises it)."""
    return ParameterError(
        f"The {name!r} parameter of {func} must be {requirement}. Got {got!r} instead."
    )


def check_choice(value: Any, choices: Iterable[Any], *, name: str, func: str) -> Any:
    choices = tuple(choices)
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise fail(name, func, f"one of {options}", value)
    return value


def check_interval(
    value: Any,
    lo: float,
    hi: float,
    *,
    name: str,
    func: str,
    closed: str = "left",
) -> float:
    """Check ``value`` is a finite real in the interval; ``closed`` is left/right/both/neither."""
    brackets = {"left": "[)", "right": "(]", "both": "[]", "neither": "()"}[closed]
    requirement = f"in {brackets[0]}{lo}, {hi}{brackets[1]}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise fail(name, func, requirement, value) from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise fail(name, func, requirement, value)
    ok_lo = v >= lo if closed in ("left", "both") else v > lo
    ok_hi = v <= hi if closed in ("right", "both") else v < hi
    if not (ok_lo and ok_hi):
        raise fail(name, func, requirement, value)
    return v


def check_positive_int(value: Any, *, name: str, func: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(name, func, f"an integer >= {minimum}", value)
    return value

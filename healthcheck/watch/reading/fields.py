"""How the view, the verdict and the report read the fields of a metrics line.

A line reaches them only once the judging has read it as a record
(`StepRecord.from_metrics_line`); these read its fields the way that record does, and
never raise: a value that is not a number is missing, a mapping that is not a mapping is
empty, an int too big for a float is infinite. So a line that `watch` judges is a line
the view and `report` can show, whatever its fields hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def number(x: Any) -> float | None:
    """``x`` as a float, or None if it is not a number (a bool is one, as in a record)."""
    if not isinstance(x, (int, float)):
        return None
    try:
        return float(x)
    except OverflowError:  # an int beyond the float range
        return math.inf if x > 0 else -math.inf


def nan_if_none(x: Any) -> float:
    """`number`, with NaN for what is not one: the form a plot column takes."""
    f = number(x)
    return math.nan if f is None else f


def mapping(x: Any) -> dict[str, float]:
    """A {name: number} field (terms, weights, grad_norm, …): its number values, by name."""
    if not isinstance(x, Mapping):
        return {}
    out = {}
    for k, v in x.items():
        f = number(v)
        if f is not None:
            out[str(k)] = f
    return out


def numbers(x: Any) -> list[float]:
    """A list-of-numbers field (lr): its numbers; a lone number is a list of one."""
    if isinstance(x, (list, tuple)):
        return [f for f in map(number, x) if f is not None]
    f = number(x)
    return [] if f is None else [f]


def step_of(x: Any) -> int | None:
    """A step or epoch counter as an int, or None if it is not a finite number."""
    f = number(x)
    return int(f) if f is not None and math.isfinite(f) else None


def kind_of(x: Any) -> str:
    """A line's kind as a record reads it: "epoch" or "eval", anything else a step."""
    return x if x in ("epoch", "eval") else "step"

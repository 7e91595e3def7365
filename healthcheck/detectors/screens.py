"""Column tests shared by the detectors' screens (see `Detector.screen`).

Each returns a boolean mask over a `MetricBlock`'s rows. They are deliberately generous:
a screen may flag rows the detector then finds healthy, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.columns import MetricBlock

Test = Callable[[np.ndarray], np.ndarray]


def any_value(block: MetricBlock, field: str, test: Test, *, skip_total: bool = False) -> np.ndarray:
    """Rows where some value of the mapping ``field`` passes ``test``."""
    names, cols = block.mapping(field)
    out = np.zeros(block.n, dtype=bool)
    for name in names:
        if not (skip_total and name == "_total"):
            out |= test(cols[name])
    return out


def not_finite(x: np.ndarray) -> np.ndarray:
    return ~np.isfinite(x)


def changed(block: MetricBlock, field: str) -> np.ndarray:
    """Rows whose mapping ``field`` differs from the row before, or holds NaN (never equal
    to itself), or follows a row of another kind or an irregular row (whose extra names
    no column holds); the first row always."""
    names, cols = block.mapping(field)
    out = np.zeros(block.n, dtype=bool)
    out[0] = True
    out[1:] |= block.kind[:-1] != block.kind[1:]
    out[1:] |= block.irregular[:-1]
    for name in names:
        c = cols[name]
        out[1:] |= ~(c[1:] == c[:-1])
        out |= np.isnan(c)
    return out


def same_primary(block: MetricBlock) -> tuple[bool, str | None]:
    """(True, name) when every row names the same primary term."""
    primaries = block.field("primary")
    first = primaries[0]
    return primaries.count(first) == len(primaries), first


def module_extremes(block: MetricBlock, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: smallest and largest finite module value (``_total`` left out), and how
    many finite ones there are."""
    names, cols = block.mapping(field)
    mods = [cols[n] for n in names if n != "_total"]
    if not mods:
        z = np.zeros(block.n)
        return z, z, np.zeros(block.n, dtype=np.int64)
    m = np.stack(mods, axis=1)
    ok = np.isfinite(m)
    lo = np.where(ok, m, np.inf).min(axis=1)
    hi = np.where(ok, m, -np.inf).max(axis=1)
    return lo, hi, ok.sum(axis=1)

"""Exponential moving averages over a whole column at once.

`Divergence` and `ExplodingGrad` smooth a value step by step; judging a block of a
metrics file advances the same average over thousands of rows. y_i = β·y_{i-1} + (1-β)·x_i
is a linear recurrence with a constant coefficient, so a prefix scan in log2(n) vector
passes computes it (y[s:] += β^s·y[:-s] for s = 1, 2, 4, ...) without a Python loop or
scipy.signal, whose import alone costs more than half a second. The sums are grouped
differently from the step-by-step loop, so the result agrees with it to a few ulps.
"""

from __future__ import annotations

import numpy as np


def ema_series(x: np.ndarray, beta: float, start: float | None) -> np.ndarray:
    """The average after each element of ``x``; ``start`` is the average before the first
    (None: the series starts at x[0], as the step-by-step detectors do)."""
    y = (1.0 - beta) * np.asarray(x, dtype=np.float64)
    if y.size == 0:
        return y
    if start is None:
        y[0] = x[0]
    else:
        y[0] += beta * start
    factor, shift = beta, 1
    while shift < y.size and factor != 0.0:
        y[shift:] += factor * y[:-shift]
        factor, shift = factor * factor, shift * 2
    return y

"""The column-wide moving average must track the step-by-step one the detectors use."""

import numpy as np
import pytest

from healthcheck.detectors.smoothing import ema_series


def step_by_step(x, beta, start):
    out, e = [], start
    for v in x:
        e = v if e is None else beta * e + (1 - beta) * v
        out.append(e)
    return np.array(out)


@pytest.mark.parametrize("start", [None, 3.0, -1e6])
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("n", [1, 2, 3, 1000, 8193])
def test_scan_matches_the_loop_to_a_few_ulps(n, beta, start):
    x = np.random.default_rng(n).normal(5.0, 2.0, n)
    expected = step_by_step(x, beta, start)
    np.testing.assert_allclose(ema_series(x, beta, start), expected, rtol=1e-12, atol=1e-9)


def test_empty_input_gives_an_empty_series():
    assert ema_series(np.array([]), 0.9, 1.0).size == 0

"""The pieces of the live view: sparkline, weighted shares, rate, the rendered panel."""

from __future__ import annotations

import math

from _runfiles import step_line
from rich.console import Console

from healthcheck.watch.state import RunState, term_shares
from healthcheck.watch.view import SPARK, progress_line, render, sparkline


def test_sparkline_is_monotone_for_a_monotone_series_and_marks_nan():
    values = [10.0 ** (-k / 4) for k in range(17)]  # four decades, evenly spaced in log
    line = sparkline(values)
    levels = [SPARK.index(c) for c in line]
    assert levels == sorted(levels, reverse=True) and levels[0] == 7 and levels[-1] == 0
    assert sparkline([1.0, math.nan, 2.0])[1] == "×"
    assert sparkline([]) == "" and sparkline([math.inf]) == "×"
    # log scale: a series evenly spaced in log10 uses the levels evenly
    assert len(set(levels)) == len(SPARK)


def test_weighted_shares_sum_to_one_when_the_loss_is_the_weighted_sum():
    line = step_line(7)
    shares = term_shares(line)
    expected = {k: line["weights"][k] * v / line["loss"] for k, v in line["terms"].items()}
    assert shares == expected and math.isclose(sum(shares.values()), 1.0)
    broken = step_line(7, "zero")  # total 0 while terms are not: shares are undefined
    assert all(math.isnan(v) for v in term_shares(broken).values())


def test_rate_comes_from_the_lines_own_timestamps():
    state = RunState("r")
    for i in range(20):
        state.add({"kind": "step", "step": 2 * i, "time": 100.0 + 0.5 * i, "loss": 1.0}, now=0.0)
    assert math.isclose(state.rate, 4.0)  # 2 steps per 0.5 s


def test_state_memory_is_bounded():
    state = RunState("r", history=10)
    for i in range(1000):
        state.add(step_line(i))
    assert len(state.losses) == 10 and state.step == 999 and state.lines == 1000


def test_panel_shows_the_numbers_and_events():
    state = RunState("myrun")
    for i in range(5):
        state.add(step_line(i))
    event = {"code": "grad.zero", "severity": "error", "step": 3, "where": "head",
             "title": "gradient of 'head' is exactly 0", "hint": "look at the clamp", "count": 4}
    console = Console(record=True, width=120)
    console.print(render(state, [event], status="UNHEALTHY"))
    text = console.export_text()
    for needle in ("myrun", "step 4", "cov", "subspace", "trunk", "grad.zero ×4", "look at the clamp",
                   "UNHEALTHY", "lr"):
        assert needle in text, needle
    assert "step=4" in progress_line(state)

"""Judging metrics lines in blocks must say exactly what judging them one by one says.

`Monitor.observe_block` skips the rows a detector's screen passes over; these tests run
both paths on the same lines, healthy and with faults of every kind the stream
detectors know, cut into blocks at arbitrary places, and compare every emitted event.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthcheck.columns import MetricBlock
from healthcheck.monitor import Monitor
from healthcheck.observe import StepRecord
from healthcheck.watch import stream_detectors

MODULES = ("encoder", "trunk", "head")


def healthy_line(i: int, rng: random.Random) -> dict:
    cov = 1.0 / (1.0 + 0.01 * i) + 0.01 * rng.random()
    sub = 0.5 * cov + 0.01 * rng.random()
    g = {m: 0.5 + 0.1 * rng.random() for m in MODULES}
    return {"schema": 1, "kind": "step", "step": i, "epoch": i // 50, "time": 1000.0 + i, "rank": 0,
            "loss": cov + 0.1 * sub, "terms": {"cov": cov, "subspace": sub},
            "weights": {"cov": 1.0, "subspace": 0.1}, "weight_sources": {"cov": "preset", "subspace": "preset"},
            "primary": "cov", "lr": [1e-3, 5e-4],
            "grad_norm": {"_total": sum(g.values()), **g},
            "update_norm": {m: 1e-3 * (1 + rng.random()) for m in MODULES},
            "param_norm": {m: 2.0 + rng.random() for m in MODULES},
            "steps_taken": i + 1, "batches_seen": i + 1, "skipped": False}


def _nan_loss(line, k):
    line["loss"] = math.nan


def _nan_term(line, k):
    line["terms"]["subspace"] = math.inf


def _zero_loss(line, k):
    line["loss"] = 0.0


def _dead_term(line, k):
    line["terms"]["subspace"] = 0.0


def _primary_zero(line, k):
    line["weights"]["cov"] = 0.0


def _weight_change(line, k):
    line["weights"]["subspace"] = 0.5


def _weight_change_sourced(line, k):
    line["weights"]["subspace"] = 0.7
    line["weight_sources"]["subspace"] = "schedule"


def _small_share(line, k):
    line["weights"]["subspace"] = 1e4


def _constant_loss(line, k):
    line["loss"] = 0.75


def _diverging(line, k):
    line["loss"] = 1e3 * (1 + k)


def _grad_zero(line, k):
    line["grad_norm"]["trunk"] = 0.0


def _grad_nan(line, k):
    line["grad_norm"]["head"] = math.nan


def _grad_vanishing(line, k):
    line["grad_norm"]["encoder"] = 1e-9


def _grad_first_small(line, k):
    line["grad_norm"]["encoder"] = 1e-5


def _grad_jump(line, k):
    line["grad_norm"]["head"] = 1e4


def _grad_first_big(line, k):
    line["grad_norm"]["encoder"] = 1e4


def _lr_zero(line, k):
    line["lr"][1] = 0.0


def _lr_tiny(line, k):
    line["lr"] = [1e-12, 1e-12]


def _lr_invalid(line, k):
    line["lr"][0] = -1.0


def _frozen(line, k):
    line["update_norm"]["trunk"] = 0.0


def _update_big(line, k):
    line["update_norm"]["head"] = 10.0


def _update_tiny(line, k):
    line["update_norm"]["head"] = 1e-12


def _skipped(line, k):
    line["skipped"] = True


def _missing_loss(line, k):
    line.pop("loss", None)


def _odd_value(line, k):
    line["grad_norm"]["trunk"] = "n/a"


def _missing_module(line, k):
    line["update_norm"].pop("head", None)


def _eval_line(line, k):
    line["kind"] = "eval"
    line["loss"] = 0.5


FAULTS = {f.__name__[1:]: f for f in (
    _nan_loss, _nan_term, _zero_loss, _dead_term, _primary_zero, _weight_change, _weight_change_sourced,
    _small_share, _constant_loss, _diverging, _grad_zero, _grad_nan, _grad_vanishing, _grad_first_small,
    _grad_jump, _grad_first_big, _lr_zero, _lr_tiny, _lr_invalid, _frozen, _update_big, _update_tiny,
    _skipped, _missing_loss, _odd_value, _missing_module, _eval_line)}


def make_lines(n: int, faults: list[tuple[str, int, int]], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    lines = [healthy_line(i, rng) for i in range(n)]
    for name, start, length in faults:
        for k, i in enumerate(range(start, min(n, start + length))):
            FAULTS[name](lines[i], k)
    return lines


def one_by_one(lines: list[dict]) -> tuple[list[tuple], list[tuple]]:
    monitor = Monitor(stream_detectors(), source="watch")
    emitted = []
    for line in copy.deepcopy(lines):
        try:
            record = StepRecord.from_metrics_line(line)
        except (TypeError, ValueError):
            continue
        emitted += monitor.observe_record(record)
    return _keys(emitted), _keys(monitor.findings())


def in_blocks(lines: list[dict], cuts: list[int]) -> tuple[list[tuple], list[tuple]]:
    monitor = Monitor(stream_detectors(), source="watch")
    emitted, start = [], 0
    for end in sorted({*cuts, len(lines)}):
        if end > start:
            emitted += monitor.observe_block(MetricBlock(copy.deepcopy(lines[start:end])))
            start = end
    return _keys(emitted), _keys(monitor.findings())


def _keys(events) -> list[tuple]:
    return [(e.code, e.where, e.step, str(e.severity), e.count) for e in events]


@pytest.mark.parametrize("fault", sorted(set(FAULTS) - {"odd_value"}))
def test_each_fault_is_judged_the_same_in_blocks(fault):
    lines = make_lines(300, [(fault, 120, 40)])
    expected = one_by_one(lines)
    assert in_blocks(lines, [64, 121, 122, 200]) == expected
    assert in_blocks(lines, list(range(0, 300, 7))) == expected


def test_a_fault_the_screens_must_not_miss_is_found_at_all():
    # guard against two paths agreeing on nothing: the faults do fire
    emitted, _ = in_blocks(make_lines(300, [("zero_loss", 10, 1), ("grad_zero", 50, 10)]), [100])
    assert {"loss.zero", "grad.zero"} <= {code for code, *_ in emitted}


def test_a_healthy_run_is_silent_in_blocks():
    emitted, findings = in_blocks(make_lines(500, []), [128, 256])
    assert emitted == [] and findings == []


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 260),
       faults=st.lists(st.tuples(st.sampled_from(sorted(FAULTS)), st.integers(0, 250), st.integers(1, 60)),
                       max_size=4),
       cuts=st.lists(st.integers(0, 260), max_size=6), seed=st.integers(0, 3))
def test_blocks_and_records_agree_on_any_mix_of_faults(n, faults, cuts, seed):
    lines = make_lines(n, faults, seed)
    lines = [line for line in lines if _valid(line)]
    assert in_blocks(lines, cuts) == one_by_one(lines)


def _valid(line: dict) -> bool:
    try:
        StepRecord.from_metrics_line(line)
    except (TypeError, ValueError):
        return False
    return True

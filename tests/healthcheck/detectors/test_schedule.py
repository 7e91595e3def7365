"""Detectors on the learning rate of each param group (healthcheck/detectors/schedule.py): each
injected fault fires with its code and place, a healthy run stays silent, and the finer
points of each rule hold."""

from __future__ import annotations

from det_cases import fault_tests, steps
from hc_fakes import healthy_step, run

import healthcheck.detectors as D
from healthcheck.events import Severity

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "InvalidLR": (D.InvalidLR, [healthy_step(0, lr=[-1e-3, 1e-3])], {("lr.invalid", "group0")}),
    "ZeroLR": (D.ZeroLR, steps(3, lr=[0.0, 1e-3]), {("lr.zero", "group0")}),
    "TinyLR": (D.TinyLR, steps(12, lr=[1e-3, 2e-8]), {("lr.tiny", "group1")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_zero_lr_for_one_warmup_step_is_silent():
    recs = [healthy_step(0, lr=[0.0, 0.0])] + steps(10, start=1)
    assert run(D.ZeroLR(), recs) == []


def test_tiny_lr_is_an_error_only_when_it_never_was_larger():
    (first, *_) = run(D.TinyLR(), steps(12, lr=[1e-3, 2e-8]))
    assert first.severity is Severity.ERROR and first.where == "group1" and first.step == 9
    # a warm-up that starts at 0 and stays tiny never had a usable rate either
    never = [healthy_step(0, lr=[1e-3, 0.0])] + steps(12, start=1, lr=[1e-3, 2e-8])
    assert {e.severity for e in run(D.TinyLR(), never)} == {Severity.ERROR}
    # a schedule that decayed below min_lr at the end is a warning
    decayed = steps(30) + steps(12, start=30, lr=[1e-3, 2e-8])
    events = run(D.TinyLR(), decayed)
    assert events and {e.severity for e in events} == {Severity.WARNING}


# -- a schedule spent before the planned end (lr.spent_early) ----------------------------
def _schedule_run(factors, planned, lr=1e-3):
    """Records whose two groups follow ``factors`` (of the base rate) step by step, judged
    with a live view that knows ``planned`` optimizer steps."""
    from types import SimpleNamespace

    recs = [healthy_step(i, lr=[lr * f, 0.1 * lr * f]) for i, f in enumerate(factors)]
    return run(D.ScheduleSpentEarly(), recs, SimpleNamespace(signals={}, planned_steps=planned))


def test_a_schedule_spent_with_most_of_the_run_left_fires_after_its_patience():
    per_batch = [0.95 ** i for i in range(200)]  # an ExponentialLR meant per epoch, stepped per batch
    events = _schedule_run(per_batch, planned=200)
    assert events and (events[0].code, events[0].where, events[0].step) == ("lr.spent_early", "schedule", 99)
    assert events[0].severity is Severity.ERROR and events[0].evidence["done"] == 0.5


def test_healthy_schedule_shapes_that_end_on_time_stay_silent():
    import math

    import torch

    n = 1000
    shapes = {
        "cosine to 0": [0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)],
        "linear to 0": [1 - i / n for i in range(n)],
        "two x0.1 steps": [1.0 if i < n // 2 else 0.1 if i < 3 * n // 4 else 0.01 for i in range(n)],
        "warm-up then cosine to a floor": [min(1.0, (i + 1) / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * i / n)))
                                           for i in range(n)],
        "inverse square root after warm-up": [min((i + 1) / 100, math.sqrt(100 / (i + 1))) for i in range(n)],
    }
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=n)
    shapes["OneCycleLR"] = []
    for _ in range(n):
        shapes["OneCycleLR"].append(opt.param_groups[0]["lr"])
        opt.step()
        one_cycle.step()
    for name, factors in shapes.items():
        assert _schedule_run(factors, planned=n) == [], name


def test_without_a_planned_length_or_with_one_group_still_learning_it_is_silent():
    per_batch = [0.95 ** i for i in range(200)]
    assert _schedule_run(per_batch, planned=None) == []
    recs = [healthy_step(i, lr=[1e-3 * f, 1e-4]) for i, f in enumerate(per_batch)]  # group 1 keeps its rate
    from types import SimpleNamespace
    assert run(D.ScheduleSpentEarly(), recs, SimpleNamespace(signals={}, planned_steps=200)) == []

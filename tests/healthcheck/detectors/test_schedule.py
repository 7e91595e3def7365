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

"""Detectors on skipped optimizer steps and the AMP scaler (healthcheck/detectors/steps.py):
each injected fault fires with its code and place, a healthy run stays silent, and the finer
points of each rule hold."""

from __future__ import annotations

from det_cases import fault_tests
from hc_fakes import codes_where, healthy_step, run

import healthcheck.detectors as D
from healthcheck.events import Severity

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "SkippedSteps": (D.SkippedSteps, [healthy_step(i, steps_taken=0) for i in range(25)],
                     {("steps.skipped", "optimizer")}),
    "AmpOverflow": (D.AmpOverflow, [healthy_step(i, amp={"scale": 1024.0, "found_inf": i % 2 == 0})
                                    for i in range(60)], {("amp.overflow", "grad_scaler")}),
    "AmpScaleCollapse": (D.AmpScaleCollapse, [healthy_step(0, amp={"scale": 0.25, "found_inf": True})],
                         {("amp.scale_collapse", "grad_scaler")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_skipped_steps_partial_is_warning_none_is_error():
    none = run(D.SkippedSteps(), FAULTS["SkippedSteps"][1])
    assert {e.severity for e in none} == {Severity.ERROR}
    partial = [healthy_step(i, steps_taken=1 + i // 3) for i in range(30)]  # one step in three
    events = run(D.SkippedSteps(), partial)
    assert events and {e.severity for e in events} == {Severity.WARNING}
    accumulated = [healthy_step(i, steps_taken=(i + 1) // 4) for i in range(40)]
    assert run(D.SkippedSteps(accumulation=4), accumulated) == []


def test_skipped_steps_from_flags_without_counters():
    recs = [healthy_step(i, steps_taken=None, batches_seen=None, skipped=True) for i in range(25)]
    assert codes_where(run(D.SkippedSteps(), recs)) == {("steps.skipped", "optimizer")}


def test_amp_occasional_overflow_is_silent():
    recs = [healthy_step(i, amp={"scale": 2.0 ** 16, "found_inf": i == 3}) for i in range(100)]
    assert run(D.AmpOverflow(), recs) == []


def test_skipped_steps_no_step_at_all_fires_at_the_second_batch():
    events = run(D.SkippedSteps(), [healthy_step(i, steps_taken=0) for i in range(3)])
    assert [(e.step, e.severity) for e in events] == [(1, Severity.ERROR), (2, Severity.ERROR)]
    # under AMP the scaler may skip its first steps: left to the window and the amp checks
    amp = [healthy_step(i, steps_taken=0, amp={"scale": 2.0 ** (15 - i), "found_inf": True}) for i in range(5)]
    assert run(D.SkippedSteps(), amp) == []
    accumulated = [healthy_step(i, steps_taken=(i + 1) // 4) for i in range(8)]
    assert run(D.SkippedSteps(accumulation=4), accumulated) == []

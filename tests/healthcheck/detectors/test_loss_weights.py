"""Detectors on the loss weights over a run (healthcheck/detectors/weights.py): each injected
fault fires with its code and place, a healthy run stays silent, and the finer points of
each rule hold."""

from __future__ import annotations

from det_cases import SOURCES, fault_tests, steps
from hc_fakes import codes_where, healthy_step, run

import healthcheck.detectors as D
from healthcheck.events import Severity

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "PrimaryWeightZero": (D.PrimaryWeightZero, [healthy_step(0, weights={"mse": 0.0, "reg": 0.1})],
                          {("weights.primary_zero", "mse")}),
    "WeightChanged": (D.WeightChanged, steps(10) + steps(5, start=10, weights={"mse": 1.0, "reg": 0.7},
                                                          weight_sources={"reg": "schedule"}),
                      {("weights.changed", "reg")}),
    "UnplannedWeightChange": (D.UnplannedWeightChange,
                              steps(10, weight_sources=SOURCES) + steps(5, start=10, weights={"mse": 1.0, "reg": 0.7},
                                                                        weight_sources=SOURCES),
                              {("weights.unplanned_change", "reg")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_primary_weight_zero_fires_on_the_first_record_and_when_missing():
    events = run(D.PrimaryWeightZero(), [healthy_step(0, weights={"reg": 0.1})])
    assert codes_where(events) == {("weights.primary_zero", "mse")}
    assert events[0].severity is Severity.CRITICAL and events[0].step == 0


def test_weight_change_records_old_new_and_source():
    _, records, _ = FAULTS["WeightChanged"]
    (event,) = run(D.WeightChanged(), records)
    assert (event.evidence["old"], event.evidence["new"], event.step) == (0.1, 0.7, 10)
    assert "schedule" in event.title


def test_unplanned_change_stays_quiet_for_changes_with_a_new_source():
    planned = steps(10, weight_sources=SOURCES) + steps(
        5, start=10, weights={"mse": 1.0, "reg": 0.7}, weight_sources={"mse": "config", "reg": "schedule:phase 0"})
    assert run(D.UnplannedWeightChange(), planned) == []
    assert codes_where(run(D.WeightChanged(), planned)) == {("weights.changed", "reg")}  # still recorded
    # one event at the change, evidence old and new; unmeasured sources are not judged
    (event,) = run(D.UnplannedWeightChange(), FAULTS["UnplannedWeightChange"][1])
    assert (event.step, event.evidence["old"], event.evidence["new"]) == (10, 0.1, 0.7)
    assert event.severity is Severity.ERROR
    no_sources = steps(10) + steps(5, start=10, weights={"mse": 1.0, "reg": 0.7})
    assert run(D.UnplannedWeightChange(), no_sources) == []
    # a per-step ramp whose owner keeps one source string is declared as owned
    ramp = [healthy_step(i, weights={"mse": 1.0, "reg": 0.01 * i}, weight_sources={"mse": "config", "reg": "ramp"})
            for i in range(10)]
    assert len(run(D.UnplannedWeightChange(), ramp)) == 9
    assert run(D.UnplannedWeightChange(owned=("ramp",)), ramp) == []

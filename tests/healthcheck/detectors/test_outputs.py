"""Detectors on model outputs and declared value ranges (healthcheck/detectors/outputs.py):
each injected fault fires with its code and place, a healthy run stays silent, and the finer
points of each rule hold."""

from __future__ import annotations

import math

import pytest
from det_cases import fault_tests, steps
from hc_fakes import healthy_eval, healthy_step, run

import healthcheck.detectors as D

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "ChanceLevel": (lambda: D.ChanceLevel(num_classes=10),
                    [healthy_eval(e, loss=math.log(10) + 0.01) for e in range(4)], {("loss.chance_level", "val")}),
    "CollapsedPredictions": (D.CollapsedPredictions,
                             [healthy_eval(e, metrics={"pred_top_share": 0.99}) for e in range(4)],
                             {("output.collapsed", "pred_top_share")}),
    "SaturatedOutputs": (D.SaturatedOutputs, steps(4, metrics={"range_at_bound": 0.28}),
                         {("output.saturated", "range")}),
    "ExpectedRange": (lambda: D.ExpectedRange("loss", 0.0, 10.0, first_steps=1), [healthy_step(0, loss=1e25)],
                      {("value.out_of_range", "loss")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_expected_range_on_a_metric_and_only_first_steps():
    det = D.ExpectedRange("cov_norm_ratio", 0.1, 10.0)
    events = run(
        det, [healthy_step(0, metrics={"cov_norm_ratio": 1.0}), healthy_step(1, metrics={"cov_norm_ratio": 2e-6})]
    )
    assert [(e.code, e.where, e.step) for e in events] == [("value.out_of_range", "cov_norm_ratio", 1)]
    late = [healthy_step(0), healthy_step(1, loss=1e25)]
    assert run(D.ExpectedRange("loss", high=10.0, first_steps=1), late) == []
    with pytest.raises(ValueError, match="low=5.0 and high=1.0"):
        D.ExpectedRange("loss", 5.0, 1.0)

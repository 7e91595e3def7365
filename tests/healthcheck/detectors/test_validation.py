"""Detectors on validation losses across evaluations (healthcheck/detectors/validation.py):
each injected fault fires with its code and place, a healthy run stays silent, and the finer
points of each rule hold."""

from __future__ import annotations

import pytest
from det_cases import HEALTHY_EVALS, fault_tests
from hc_fakes import healthy_epoch, healthy_eval, run

import healthcheck.detectors as D

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "ValConstant": (D.ValConstant, [healthy_eval(e, loss=0.4321) for e in range(4)], {("val.constant", "val")}),
    "ValPlateau": (
        D.ValPlateau,
        HEALTHY_EVALS[:5] + [healthy_eval(e, loss=0.6) for e in range(5, 17)],
        {("val.plateau", "val")},
    ),
    "ValTrainGap": (
        D.ValTrainGap,
        [r for e in range(3) for r in (healthy_epoch(e, loss=0.01), healthy_eval(e, loss=1.2))],
        {("val.train_gap", "val")},
    ),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_val_plateau_needs_patience():
    recs = HEALTHY_EVALS[:5] + [healthy_eval(e, loss=0.6) for e in range(5, 12)]
    assert run(D.ValPlateau(), recs) == []


def test_val_train_gap_needs_two_evaluations_and_positive_losses():
    def pairs(losses):
        return [r for e, (t, v) in enumerate(losses) for r in (healthy_epoch(e, loss=t), healthy_eval(e, loss=v))]

    assert run(D.ValTrainGap(), pairs([(0.01, 1.2), (0.5, 0.55), (0.01, 1.2)])) == []  # never twice in a row
    (event,) = run(D.ValTrainGap(), pairs([(0.5, 0.6), (0.01, 1.2), (0.01, 1.3)]))
    assert event.step == healthy_eval(2).step and event.evidence["ratio"] == pytest.approx(130.0)
    assert run(D.ValTrainGap(), pairs([(-2.0, 1.0), (-2.0, 1.0), (-2.0, 1.0)])) == []  # log-likelihoods

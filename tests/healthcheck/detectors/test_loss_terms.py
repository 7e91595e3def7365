"""Detectors on the loss terms and their weights (healthcheck/detectors/loss_terms.py): each
injected fault fires with its code and place, a healthy run stays silent, and the finer
points of each rule hold."""

from __future__ import annotations

import pytest
from det_cases import fault_tests, steps
from hc_fakes import healthy_step, run

import healthcheck.detectors as D

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "DeadTerm": (D.DeadTerm, [healthy_step(i, terms={"mse": 1.0, "reg": 0.0}) for i in range(12)],
                 {("loss.dead_term", "reg")}),
    "PrimaryShare": (D.PrimaryShare, steps(12, weights={"mse": 1e-3, "reg": 10.0}),
                     {("loss.primary_share", "mse")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_dead_term_ignores_zero_weight_terms():
    recs = [healthy_step(i, terms={"mse": 1.0, "reg": 0.0}, weights={"mse": 1.0, "reg": 0.0}) for i in range(20)]
    assert run(D.DeadTerm(), recs) == []


def test_primary_share_evidence_is_the_weighted_share():
    rec = healthy_step(0, weights={"mse": 1e-3, "reg": 10.0})
    (event,) = run(D.PrimaryShare(patience=1), [rec])
    wm, wr = 1e-3 * abs(rec.terms["mse"]), 10.0 * abs(rec.terms["reg"])
    assert event.evidence["share"] == pytest.approx(wm / (wm + wr))

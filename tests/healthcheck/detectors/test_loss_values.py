"""Detectors on the value of the loss (healthcheck/detectors/loss_values.py): each injected
fault fires with its code and place, a healthy run stays silent, and the finer points of
each rule hold."""

from __future__ import annotations

import math

from det_cases import fault_tests, steps
from hc_fakes import codes_where, healthy_eval, healthy_step, run

import healthcheck.detectors as D

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "NonFiniteLoss": (D.NonFiniteLoss, steps(5) + [healthy_step(5, terms={"mse": math.nan, "reg": 0.2},
                                                                loss=math.nan)],
                      {("loss.nonfinite", "mse")}),
    "ZeroLoss": (D.ZeroLoss, steps(3) + [healthy_step(3, loss=0.0)], {("loss.zero", "total")}),
    "ConstantLoss": (D.ConstantLoss, steps(25, loss=0.4242), {("loss.constant", "total")}),
    "Divergence": (D.Divergence, steps(40) + [healthy_step(i, loss=1e3 * (i - 39)) for i in range(40, 50)],
                   {("loss.diverging", "total")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_nonfinite_loss_without_terms_does_not_claim_they_are_finite():
    events = run(D.NonFiniteLoss(), [healthy_step(0, loss=math.nan, terms={}, weights={})])
    assert codes_where(events) == {("loss.nonfinite", "total")}
    assert "every term" not in events[0].title.lower() and "every term" not in events[0].detail.lower()
    assert "no loss terms were logged" in events[0].detail
    with_terms = run(D.NonFiniteLoss(), [healthy_step(0, loss=math.nan)])
    assert "every term is finite" in with_terms[0].title


def test_nonfinite_loss_names_total_only_when_terms_are_finite():
    events = run(D.NonFiniteLoss(), [healthy_step(0, loss=math.inf)])
    assert codes_where(events) == {("loss.nonfinite", "total")}
    events = run(D.NonFiniteLoss(), [healthy_eval(0, loss=math.nan)])
    assert codes_where(events) == {("loss.nonfinite", "val/total")}


def test_zero_loss_defers_to_primary_weight_when_every_weight_is_zero():
    assert run(D.ZeroLoss(), [healthy_step(0, loss=0.0, weights={"mse": 0.0, "reg": 0.0})]) == []
    # no weights recorded: a zero total only contradicts non-zero terms
    assert run(D.ZeroLoss(), [healthy_step(0, loss=0.0, weights={}, terms={})]) == []
    assert run(D.ZeroLoss(), [healthy_step(0, loss=0.0, weights={})]) != []


def test_divergence_ignores_single_spikes():
    recs = [healthy_step(i, loss=20 * healthy_step(i).loss) if i % 25 == 24 else healthy_step(i) for i in range(200)]
    assert run(D.Divergence(), recs) == []

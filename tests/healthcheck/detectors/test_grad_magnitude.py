"""Detectors on the size of module gradients (healthcheck/detectors/grad_magnitude.py): each
injected fault fires with its code and place, a healthy run stays silent, and the finer
points of each rule hold."""

from __future__ import annotations

import math

import pytest
import torch
from det_cases import Net, fault_tests, steps, with_grad
from hc_fakes import codes_where, healthy_step, run

import healthcheck.detectors as D
from healthcheck.live import LiveView

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "NonFiniteGrad": (D.NonFiniteGrad, steps(3) + [with_grad(healthy_step(3), encoder=math.nan, _total=math.nan)],
                      {("grad.nonfinite", "encoder")}),
    "VanishingGrad": (D.VanishingGrad, [with_grad(r, encoder=1e-9) for r in steps(6)],
                      {("grad.vanishing", "encoder")}),
    "ExplodingGrad": (D.ExplodingGrad, steps(20) + [with_grad(healthy_step(20), head=900.0, _total=900.0)],
                      {("grad.exploding", "head")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_nonfinite_grad_defers_to_the_amp_scaler():
    rec = with_grad(healthy_step(0, amp={"scale": 1024.0, "found_inf": True}), encoder=math.inf)
    assert run(D.NonFiniteGrad(), [rec]) == []


def test_vanishing_first_to_last_ratio():
    recs = [with_grad(r, encoder=1e-5, head=1.0) for r in steps(6)]
    events = run(D.VanishingGrad(), recs)
    assert ("grad.vanishing", "encoder") in codes_where(events)
    assert any(e.evidence.get("ratio") == pytest.approx(1e-5) for e in events)


def test_exploding_first_to_last_ratio():
    recs = [with_grad(r, encoder=2000.0, head=1.0) for r in steps(6)]
    assert ("grad.exploding", "encoder") in codes_where(run(D.ExplodingGrad(), recs))


def test_nonfinite_grad_live_lists_parameters():
    net = Net()
    net(torch.randn(3, 4)).sum().backward()
    net.head.weight.grad[0, 0] = math.nan
    live = LiveView(net, None)
    live.begin("after_backward", 0)
    rec = healthy_step(0, grad_norm={})  # not measured: the live view decides
    events = D.NonFiniteGrad().check(rec, D.NonFiniteGrad().new_state(), live)
    assert codes_where(events) == {("grad.nonfinite", "head")}
    assert "head.weight" in events[0].detail and "head.bias" not in events[0].detail

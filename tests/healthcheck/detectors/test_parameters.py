"""Detectors on parameter updates and optimizer coverage (healthcheck/detectors/parameters.py):
each injected fault fires with its code and place, a healthy run stays silent, and the finer
points of each rule hold."""

from __future__ import annotations

import pytest
from det_cases import fault_tests, live_steps, steps, with_grad
from hc_fakes import codes_where, run

import healthcheck.detectors as D
from healthcheck.events import Severity

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "FrozenParams": (D.FrozenParams, steps(6, update_norm={"encoder": 1e-3, "head": 0.0}),
                     {("param.frozen", "head")}),
    "UpdateRatio": (D.UpdateRatio, steps(25, update_norm={"encoder": 1e-7, "head": 1e-3}),
                    {("param.update_ratio", "encoder")}),
    "BlockedUpdate": (D.BlockedUpdate, steps(6, update_norm={"encoder": 1e-7, "head": 1e-3}),
                      {("param.update_blocked", "encoder")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_frozen_ignores_skipped_steps():
    recs = steps(10, update_norm={"encoder": 0.0, "head": 0.0}, skipped=True)
    assert run(D.FrozenParams(), recs) == []


def test_update_ratio_too_large():
    recs = steps(25, update_norm={"encoder": 1e-3, "head": 3.0})
    events = run(D.UpdateRatio(), recs)
    assert ("param.update_ratio", "head") in codes_where(events)
    assert events[0].evidence["ratio"] == pytest.approx(3.0 / 1.5)


def test_not_in_optimizer_fires_once_at_start():
    events = live_steps(D.NotInOptimizer(), "ok", optimizer_params=lambda net: net.encoder.parameters())
    assert codes_where(events) == {("param.not_in_optimizer", "head")}
    assert len(events) == 1 and events[0].step == 0
    assert events[0].evidence["numel"] == 8 + 1
    assert live_steps(D.NotInOptimizer(), "ok") == []


def test_update_ratio_far_too_large_is_an_error_after_five_steps():
    # ‖Δθ‖/‖θ‖ = 1/3 per step: each step replaces a third of the encoder's weights
    events = run(D.UpdateRatio(), steps(6, update_norm={"encoder": 1.0, "head": 1e-3}))
    assert [(e.where, e.step, e.severity) for e in events] == [("encoder", 4, Severity.ERROR),
                                                               ("encoder", 5, Severity.ERROR)]
    assert events[0].evidence["ratio"] == pytest.approx(1.0 / 3.0)
    # 0.1 per step is large but below the error bound: only the 20-step warning could fire
    assert run(D.UpdateRatio(), steps(10, update_norm={"encoder": 0.3, "head": 1e-3})) == []


def test_blocked_update_needs_a_usable_lr_and_gradient():
    blocked = {"encoder": 1e-7, "head": 1e-3}
    assert run(D.BlockedUpdate(), steps(6, update_norm=blocked, lr=[1e-6, 1e-6])) == []  # lr.tiny's case
    zero_grad = [with_grad(r, encoder=0.0) for r in steps(6, update_norm=blocked)]
    assert run(D.BlockedUpdate(), zero_grad) == []  # nothing to apply
    # plain SGD with a small gradient: the update is exactly lr x ‖g‖, nothing is blocked
    sgd = [with_grad(r, encoder=1e-4) for r in steps(6, update_norm={"encoder": 1e-3 * 1e-4, "head": 1e-3})]
    assert run(D.BlockedUpdate(), sgd) == []
    assert run(D.BlockedUpdate(), steps(4, update_norm=blocked)) == []  # patience 5


def test_frozen_with_gradient_and_lr_fires_after_two_applied_steps():
    # head has a gradient (~0.8) and lr 1e-3 > 0, yet its update is exactly 0: a step doing nothing
    events = run(D.FrozenParams(), steps(3, update_norm={"encoder": 1e-3, "head": 0.0}))
    assert [(e.where, e.step) for e in events] == [("head", 1), ("head", 2)]
    # without a gradient (an unused module) it waits the longer patience, like grad.none
    idle = [with_grad(r, head=0.0) for r in steps(3, update_norm={"encoder": 1e-3, "head": 0.0})]
    assert [(e.where, e.step) for e in run(D.FrozenParams(), idle)] == [("head", 2)]
    # lr 0 (a warm-up's first step, twice) is lr.zero's finding; here it is the longer patience too
    zero_lr = steps(2, update_norm={"encoder": 0.0, "head": 0.0}, lr=[0.0, 0.0])
    assert run(D.FrozenParams(), zero_lr) == []


def test_modules_frozen_by_one_cause_are_one_event():
    # lr 0 on every group freezes every module at once: one finding naming them all
    every = steps(4, update_norm={"encoder": 0.0, "head": 0.0}, lr=[0.0, 0.0])
    events = run(D.FrozenParams(), every)
    assert [(e.where, e.step, e.evidence["modules"]) for e in events] == [("encoder, head", 2, 2),
                                                                          ("encoder, head", 3, 2)]
    assert "encoder" in events[0].detail and "head" in events[0].detail

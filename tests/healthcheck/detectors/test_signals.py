"""Detectors reading exact signals (healthcheck/detectors/signals.py), fed the facts a
`LiveView` carries: each fires with its code and place on the fault's signal, and stays
silent without a signal, on a healthy one, and on the look-alikes (a term that is truly
zero, a model too early to have learnt anything)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from hc_fakes import healthy_step, run

import healthcheck.detectors as D


def live(**signals):
    return SimpleNamespace(signals=signals)


def test_not_cleared_fires_per_owning_module_and_is_silent_without_the_signal():
    events = run(D.GradNotCleared(), [healthy_step(1)],
                 live(uncleared_grads=("encoder.0.weight", "encoder.0.bias", "head.weight")))
    assert {(e.code, e.where) for e in events} == {("grad.not_cleared", "encoder.0"), ("grad.not_cleared", "head")}
    assert run(D.GradNotCleared(), [healthy_step(i) for i in range(5)], live()) == []
    assert run(D.GradNotCleared(), [healthy_step(1)], None) == []


def test_term_unreached_fires_on_no_or_nonfinite_reach_only_for_nonzero_terms():
    reach = {"fit": (0.5, 0.2), "detached": (0.3, 0.0), "exploded": (0.3, math.nan), "zero": (0.0, 0.0)}
    events = run(D.TermUnreached(), [healthy_step(0)], live(term_reach=reach))
    assert {(e.code, e.where) for e in events} == {("loss.term_unreached", "detached"),
                                                  ("loss.term_unreached", "exploded")}
    healthy = {"fit": (0.5, 0.2), "aux": (1e-3, 1e-4)}
    assert run(D.TermUnreached(), [healthy_step(i) for i in range(5)], live(term_reach=healthy)) == []


def _pairing_run(det, n, gap, loss):
    """n steps, probed every 10, with a relative pairing gap and a loss given per step."""
    out = []
    state = det.new_state()
    for i in range(n):
        signals = {"pairing": (loss(i) * (1 - gap(i)), loss(i))} if i % 10 == 0 else {}
        out.extend(det.check(healthy_step(i, loss=loss(i)), state, live(**signals)))
    return out


def test_no_signal_fires_after_warmup_when_the_loss_fell_without_a_gap():
    events = _pairing_run(D.NoDataSignal(), 160, gap=lambda i: 0.0, loss=lambda i: 1.0 / (1 + 0.01 * i))
    assert events and events[0].code == "data.no_signal" and events[0].step == 100


def test_no_signal_is_silent_on_a_learning_run_and_on_one_too_early_to_judge():
    learning = _pairing_run(D.NoDataSignal(), 200, gap=lambda i: min(0.7, 0.01 * i),
                            loss=lambda i: 1.0 / (1 + 0.01 * i))
    assert learning == []
    not_yet = _pairing_run(D.NoDataSignal(), 200, gap=lambda i: 0.0, loss=lambda i: 1.0 - 1e-5 * i)
    assert not_yet == []


def _written_run(n, writes, loss):
    """n steps; ``writes(i)``: the modules the live view found written before step i."""
    det, out = D.WeightsMovedOutside(), []
    state = det.new_state()
    for i in range(n):
        moved = writes(i)
        out.extend(det.check(healthy_step(i, loss=loss(i)), state, live(**({"moved_outside": moved} if moved else {}))))
    return out


def test_moved_outside_warns_on_one_write_and_errs_when_writes_persist_and_the_loss_is_stuck():
    once = _written_run(60, lambda i: ("head",) if i == 30 else (), loss=lambda i: 1.0)
    assert [(e.code, e.where, e.step, e.severity.name) for e in once] == [
        ("param.moved_outside", "head", 30, "WARNING")]
    every = _written_run(30, lambda i: ("encoder", "head") if i else (), loss=lambda i: 1.0)
    errors = [e for e in every if e.severity.name == "ERROR"]
    assert errors and errors[0].step == 19 and errors[0].where == "encoder"
    assert all(e.severity.name == "WARNING" for e in every if e.step < 19)


def test_moved_outside_only_warns_where_the_writes_come_with_learning():
    """A loop that perturbs its weights on purpose every step (SAM) and learns."""
    learning = _written_run(60, lambda i: ("encoder",) if i else (), loss=lambda i: 1.0 / (1 + 0.05 * i))
    assert learning and all(e.severity.name == "WARNING" for e in learning)


def test_moved_outside_is_silent_without_writes_or_a_live_view():
    assert _written_run(60, lambda i: (), loss=lambda i: 1.0) == []
    assert run(D.WeightsMovedOutside(), [healthy_step(i) for i in range(30)], None) == []

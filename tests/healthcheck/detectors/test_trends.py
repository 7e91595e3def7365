"""Trends over a window of steps (healthcheck/detectors/trends.py): a steady gradient climb,
updates too small to learn, weights eroded by decay. Each fault fires with its code and
place, a healthy run stays silent, and the healthy runs that look closest to each fault
(a falling loss, a warm-up, ordinary decay, a converged run) stay silent too."""

from __future__ import annotations

import math

from det_cases import HEALTHY, fault_tests
from hc_fakes import healthy_step, run

import healthcheck.detectors as D
from healthcheck.events import Severity


def mutated(n, change):
    """n healthy steps, each passed through change(i, record) -> field overrides."""
    return [healthy_step(i, **change(i, healthy_step(i))) for i in range(n)]


def _grad(total):
    return {"encoder": total, "_total": total}


# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "GradGrowth": (D.GradGrowth, mutated(60, lambda i, r: {"grad_norm": _grad(0.1 * 1.06 ** i), "loss": 1.0}),
                   {("grad.growing", "total")}),
    "ProgressStall": (D.ProgressStall,
                      mutated(60, lambda i, r: {"loss": 1.0, "update_norm": {"encoder": 3e-6, "head": 1e-6}}),
                      {("progress.stall", "total")}),
    "DecayErosion": (D.DecayErosion, mutated(60, lambda i, r: {"loss": 1.0, "param_norm": {"encoder": 3 * 0.99 ** i}}),
                     {("optim.decay_erosion", "total")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


# -- grad.growing -----------------------------------------------------------------------
def test_grad_growth_silent_on_healthy_run():
    assert run(D.GradGrowth(), HEALTHY) == []


def test_grad_growth_fires_on_a_steady_climb_with_a_flat_loss():
    records = mutated(80, lambda i, r: {"grad_norm": _grad(0.1 * 1.06 ** i), "loss": 1.0 + 0.01 * math.sin(i)})
    events = run(D.GradGrowth(), records)
    assert events and events[0].code == "grad.growing" and events[0].severity == Severity.ERROR
    assert events[0].evidence["growth"] >= 10


def test_grad_growth_is_a_warning_while_the_loss_falls():
    records = mutated(80, lambda i, r: {"grad_norm": _grad(0.1 * 1.06 ** i)})
    events = run(D.GradGrowth(), records)
    assert events and all(e.severity == Severity.WARNING for e in events)


def test_grad_growth_ignores_a_climb_that_is_not_monotone():
    # ten-fold overall, but the middle of the window dips below its start
    def g(i):
        return 0.1 * (50 if i % 50 >= 40 else (0.05 if 20 <= i % 50 < 30 else 1.0))
    records = mutated(100, lambda i, r: {"grad_norm": _grad(g(i)), "loss": 1.0})
    assert run(D.GradGrowth(), records) == []


def test_grad_growth_ignores_a_smaller_rise():
    records = mutated(100, lambda i, r: {"grad_norm": _grad(0.1 * 1.03 ** i), "loss": 1.0})
    assert run(D.GradGrowth(window=50), records) == []  # 1.03**40 ≈ 3.3x over the window


# -- progress.stall ---------------------------------------------------------------------
def _tiny_updates(i, r, loss=None):
    return {"update_norm": {"encoder": 3e-6, "head": 1e-6}, "loss": 1.0 + 0.01 * math.sin(i) if loss is None else loss}


def test_stall_silent_on_healthy_run():
    assert run(D.ProgressStall(), HEALTHY) == []


def test_stall_fires_when_updates_stay_tiny_and_the_loss_is_flat():
    events = run(D.ProgressStall(), mutated(60, _tiny_updates))
    assert events and events[0].code == "progress.stall" and events[0].step == 49


def test_stall_silent_when_the_loss_falls_with_small_updates():
    records = mutated(100, lambda i, r: _tiny_updates(i, r, loss=1.0 / (1 + 0.05 * i)))
    assert run(D.ProgressStall(), records) == []


def test_stall_waits_while_a_warmup_raises_the_rate():
    records = mutated(60, lambda i, r: {**_tiny_updates(i, r), "lr": [1e-6 * (i + 1)]})
    assert run(D.ProgressStall(), records) == []


def test_stall_silent_once_updates_were_ever_healthy():
    # a converged run: ratios healthy early, then tiny, loss flat afterwards
    records = [healthy_step(i) for i in range(20)] + mutated(80, _tiny_updates)[20:]
    assert run(D.ProgressStall(), records) == []


# -- optim.decay_erosion ----------------------------------------------------------------
def _eroding(i, r, loss=1.0):
    return {"param_norm": {"encoder": 3.0 * 0.99 ** i, "head": 1.5 * 0.99 ** i}, "loss": loss + 0.01 * math.sin(i)}


def test_erosion_silent_on_healthy_run():
    assert run(D.DecayErosion(), HEALTHY) == []


def test_erosion_fires_when_norms_shrink_and_the_loss_stalls():
    events = run(D.DecayErosion(), mutated(60, _eroding))
    assert events and events[0].code == "optim.decay_erosion" and events[0].step == 49
    assert events[0].evidence["shrink"] > 0.3


def test_erosion_silent_when_the_loss_falls_meanwhile():
    records = mutated(80, lambda i, r: _eroding(i, r, loss=2.0 / (1 + 0.05 * i)))
    assert run(D.DecayErosion(), records) == []


def test_erosion_silent_on_ordinary_decay():
    records = mutated(120, lambda i, r: {"param_norm": {"encoder": 3.0 * (1 - 1e-4) ** i}, "loss": 1.0})
    assert run(D.DecayErosion(), records) == []

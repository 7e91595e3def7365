"""The monitor as a ris_model Trainer callback: the loss-term ranges it adds at fit start.

The ranges are a mathematical statement about HybridLoss (cov of two trace-N PSD matrices
is in [0, 1 + N]; the other terms are shares), so they are checked against the loss itself
on random predictions and targets, and against the gate's ranges at initialisation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from healthcheck.events import SEVERITIES, Severity
from healthcheck.monitor import Monitor
from healthcheck.policy import Policy
from healthcheck.ris.gate_subject import init_ranges
from healthcheck.ris.trainer_callback import RisTrainerHealth, range_detectors, term_ranges
from ris_model.config import load_config
from ris_model.loss import CovPrediction, HybridLoss

RECORD_ALL = Policy(severity={s: "record" for s in SEVERITIES})


def test_training_ranges_are_the_gates_without_its_initialisation_floor():
    for n in (1, 16, 64):
        train, init = term_ranges(n), init_ranges(n)
        assert set(train) == set(init)
        for term, (lo, hi) in init.items():
            assert train[term][1] == hi and train[term][0] <= lo
    assert term_ranges(16)["cov"] == (0.0, 17.0)
    with pytest.raises(ValueError, match="n_elements=0"):
        term_ranges(0)


def test_every_term_of_the_loss_stays_in_its_range_on_random_inputs():
    cfg = load_config("tiny")
    n, k = cfg.system.n_elements, cfg.system.k_max
    loss = HybridLoss(cfg.loss.weights, system=cfg.system)
    gen = torch.Generator().manual_seed(0)
    ranges = term_ranges(n)
    for scale in (1e-3, 1.0, 1e3):  # the terms normalise both sides: any scale stays in range
        F = torch.randn(8, n, k, dtype=torch.complex64, generator=gen) * scale
        A = torch.randn(8, n, n, dtype=torch.complex64, generator=gen)
        R = A @ A.mH  # a random PSD target
        phi = torch.rand(8, k, generator=gen) * 2 - 1
        theta = torch.rand(8, k, generator=gen) * 0.5
        terms = loss.terms(CovPrediction(factor=F), R, phi, theta, torch.full((8, k), 5.0),
                           torch.ones(8, k, dtype=torch.bool))
        for term, value in terms.items():
            lo, hi = ranges[term]
            assert lo <= float(value) <= hi, (term, float(value), scale)


def fake_trainer(n_elements: int):
    model = torch.nn.Linear(2, 2)
    return SimpleNamespace(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           cfg=SimpleNamespace(system=SimpleNamespace(n_elements=n_elements)),
                           stop_reason=None, request_stop=lambda message, reason=None: None)


def step_metrics(step, **terms):
    values = {"cov": 1.5, "subspace": 0.8, "peak": 0.5, "ortho": 0.05, **terms}
    return {"kind": "step", "step": step, "loss": sum(values.values()), "terms": values}


def test_fit_start_adds_the_ranges_and_an_unnormalised_target_fires_at_step_0():
    health = RisTrainerHealth(Monitor([], policy=RECORD_ALL))
    trainer = fake_trainer(16)
    health.on_fit_start(trainer)
    health.on_fit_start(trainer)  # a second fit keeps one set
    assert [d.key for d in health.monitor.detectors] == ["cov", "subspace", "peak", "ortho"]
    health.on_after_backward(trainer, step_metrics(0, cov=1.2e8))  # target of trace 1e-4 N
    health.on_after_backward(trainer, step_metrics(1, cov=16.9))  # inside [0, 17]: silent
    health.on_validation_end(trainer, {"kind": "eval", "step": 1, "loss": 2.0,
                                       "terms": {"cov": 1.0, "subspace": 1.5}})
    got = [(e.code, e.where, e.step) for e in health.monitor.events]
    assert got == [("value.out_of_range", "cov", 0), ("value.out_of_range", "val/subspace", 1)]


def test_healthy_terms_stay_silent():
    health = RisTrainerHealth(Monitor([], policy=RECORD_ALL))
    trainer = fake_trainer(16)
    health.on_fit_start(trainer)
    for i in range(20):
        health.on_after_backward(trainer, step_metrics(i, cov=1.6 - 0.03 * i, ortho=0.0))
    assert list(health.monitor.events) == []
    assert all(isinstance(d, type(range_detectors(4)[0])) for d in health.monitor.detectors)


def _fit_steps(trainer, health, steps, clear):
    """What the trainer's loop does around the callback: backward, hook, step, hook."""
    for step in range(steps):
        if clear:
            trainer.optimizer.zero_grad(set_to_none=True)
        trainer.model(torch.randn(4, 2)).pow(2).mean().backward()
        health.on_after_backward(trainer, step_metrics(step))
        trainer.optimizer.step()
        health.on_after_optimizer_step(trainer, step_metrics(step))
    health.on_fit_end(trainer)


@pytest.mark.parametrize("clear", [True, False])
def test_gradients_not_cleared_between_steps_fire_from_the_second_step(clear):
    from healthcheck.detectors import GradNotCleared

    health = RisTrainerHealth(Monitor([GradNotCleared()], policy=RECORD_ALL))
    trainer = fake_trainer(16)
    health.on_fit_start(trainer)
    _fit_steps(trainer, health, 3, clear)
    got = [(e.code, e.where, e.step) for e in health.monitor.events if e.code != "monitor.summary"]
    assert got[:1] == ([] if clear else [("grad.not_cleared", "_root", 1)])
    assert {code for code, _, _ in got} <= {"grad.not_cleared"}
    assert not trainer.model.weight._backward_hooks  # fit end takes the hooks off


# -- the R_bp baseline the Trainer declares at each evaluation ------------------------------
class AnswersAtValidation(torch.nn.Module):
    """Trains the real network, but at validation answers with ``answer(rbp)``: a model whose
    validation quality the test chooses."""

    def __init__(self, model, answer):
        super().__init__()
        self.model, self.answer = model, answer

    def forward(self, rbp, snr_db, snapshots=None):
        out = self.model(rbp, snr_db, snapshots)
        return out if self.training else CovPrediction(factor=self.answer(rbp))


def _fit_with_answer(tmp_path, make_answer, epochs=8):
    from healthcheck.detectors import BelowBaseline
    from ris_model.batches import build_scenes
    from ris_model.training.train import Trainer

    cfg = load_config("tiny", overrides=["train.batch_size=16", "train.train_scenes=48", "train.val_scenes=16",
                                         f"train.epochs={epochs}", "train.warmup_steps=2", "model.width=32",
                                         "model.depth=2"])
    train, val = build_scenes(cfg.system, 48, seed=0), build_scenes(cfg.system, 16, seed=1)
    health = RisTrainerHealth(Monitor([BelowBaseline()], policy=RECORD_ALL))
    trainer = Trainer(cfg, tmp_path, device="cpu", callbacks=[health], train_scenes=train, val_scenes=val)
    trainer.net = AnswersAtValidation(trainer.model, make_answer(cfg, val))
    trainer.fit()
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "eval"]
    return evals, [e for e in health.monitor.events if e.code == "val.below_baseline"]


def _echo_rbp(cfg, val):
    """R_bp's own eigen-factor: exactly the baseline, so it never beats it."""
    return lambda rbp: CovPrediction.from_covariance(rbp, cfg.system.k_max).factor


def _oracle(cfg, val):
    """The true covariance's eigen-factor, found by the scene's R_bp: better than R_bp on every score."""
    flat = val.rbp.flatten(1)

    def answer(rbp):
        index = (rbp.flatten(1)[:, None] == flat[None]).all(-1).int().argmax(1)
        return CovPrediction.from_covariance(val.R[index], cfg.system.k_max).factor
    return answer


def test_the_trainer_logs_its_rbp_baseline_and_a_model_no_better_than_rbp_is_flagged(tmp_path):
    evals, events = _fit_with_answer(tmp_path, _echo_rbp)
    assert len(evals) == 8
    for line in evals:
        m = line["metrics"]
        assert {"baseline/loss", "baseline/cov", "within_1deg", "baseline_max/within_1deg", "median_angle_deg",
                "baseline/median_angle_deg"} <= m.keys()
        assert line["terms"]["cov"] == pytest.approx(m["baseline/cov"], rel=1e-6)  # the echo is R_bp
    assert {"cov", "within_1deg"} <= {e.where for e in events}
    assert all(e.step >= evals[3]["step"] for e in events)  # three evaluations of warm-up
    assert max(e.severity for e in events) == Severity.ERROR


def test_a_model_that_beats_rbp_is_not_flagged(tmp_path):
    evals, events = _fit_with_answer(tmp_path, _oracle, epochs=5)
    assert events == []
    last = evals[-1]
    assert last["loss"] < last["metrics"]["baseline/loss"] and last["terms"]["cov"] < last["metrics"]["baseline/cov"]
    assert last["metrics"]["within_1deg"] > last["metrics"]["baseline_max/within_1deg"]
    assert last["metrics"]["median_angle_deg"] < last["metrics"]["baseline/median_angle_deg"]


# -- small real ris Trainer runs under one detector -------------------------------------------
def _small_run(tmp_path, detector, steps):
    """A tiny ris Trainer over ``steps`` steps of 16 scenes (64 training scenes), judged by
    ``detector`` alone; returns (trainer, health) before fit."""
    from ris_model.batches import build_scenes
    from ris_model.training.train import Trainer

    batch, scenes = 16, 64
    cfg = load_config("tiny", overrides=[f"train.batch_size={batch}", f"train.train_scenes={scenes}",
                                         "train.val_scenes=16", f"train.epochs={steps * batch // scenes}",
                                         "train.warmup_steps=5", "model.width=32", "model.depth=2"])
    health = RisTrainerHealth(Monitor([detector], policy=RECORD_ALL))
    trainer = Trainer(cfg, tmp_path, device="cpu", callbacks=[health], train_scenes=build_scenes(cfg.system, scenes, 0),
                      val_scenes=build_scenes(cfg.system, 16, seed=1))
    return trainer, health


# -- the pairing probe before backward (data.no_signal) ------------------------------------
def _fit_probed(tmp_path, fault_name=None, steps=120):
    from healthcheck.detectors import NoDataSignal
    from healthcheck.ris.faults import REGISTRY

    trainer, health = _small_run(tmp_path, NoDataSignal(), steps)
    if fault_name:
        next(f for f in REGISTRY if f.name == fault_name).apply(trainer)
    trainer.fit()
    return [e for e in health.monitor.events if e.code == "data.no_signal"]


def test_targets_that_are_the_same_for_every_scene_fire_no_signal_after_the_warm_up(tmp_path):
    events = _fit_probed(tmp_path, "constant_targets")
    assert events and 100 <= events[0].step < 120
    assert events[0].where == "targets"


def test_a_healthy_run_keeps_its_targets_paired(tmp_path):
    assert _fit_probed(tmp_path) == []


# -- weights written between steps outside the optimizer (param.moved_outside) ------------
def _fit_written(tmp_path, reset: bool, steps=30):
    from healthcheck.detectors import WeightsMovedOutside

    trainer, health = _small_run(tmp_path, WeightsMovedOutside(), steps)
    if reset:  # reset_parameters() inside the loop: every training forward starts from a fresh init

        def reset_first(module, args):
            if module.training:
                with torch.no_grad():
                    for m in module.modules():
                        if m is not module and hasattr(m, "reset_parameters"):
                            m.reset_parameters()
        trainer.model.register_forward_pre_hook(reset_first)
    trainer.fit()
    return [e for e in health.monitor.events if e.code == "param.moved_outside"]


def test_weights_reset_inside_the_loop_fire_once_the_writes_persist(tmp_path):
    events = _fit_written(tmp_path, reset=True)
    errors = [e for e in events if e.severity == Severity.ERROR]
    assert events[0].step == 1 and events[0].severity == Severity.WARNING
    assert errors and errors[0].step == 19


def test_a_healthy_run_writes_its_weights_only_by_the_optimizer(tmp_path):
    assert _fit_written(tmp_path, reset=False) == []


# -- a schedule spent before the planned end (lr.spent_early) ------------------------------
def _fit_scheduled(tmp_path, gamma=None, steps=40):
    from healthcheck.detectors import ScheduleSpentEarly

    trainer, health = _small_run(tmp_path, ScheduleSpentEarly(), steps)
    if gamma is not None:  # an exponential decay meant per epoch, stepped per batch
        trainer.scheduler = torch.optim.lr_scheduler.ExponentialLR(trainer.optimizer, gamma)
    trainer.fit()
    return trainer, [e for e in health.monitor.events if e.code == "lr.spent_early"]


def test_a_schedule_spent_early_fires_in_the_ris_trainer(tmp_path):
    trainer, events = _fit_scheduled(tmp_path, gamma=0.7)
    assert trainer.total_steps == 40
    assert events and events[0].step < 0.8 * 40


def test_the_ris_trainers_own_schedule_runs_to_its_end_silently(tmp_path):
    _, events = _fit_scheduled(tmp_path)
    assert events == []

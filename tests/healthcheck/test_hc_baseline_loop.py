"""``TrainingHealth.evaluate(..., baselines=...)`` in a real (tiny) loop: a regression whose
targets depend on its inputs beats the constant predictor's validation loss and stays quiet;
one whose targets are noise never can, and ``val.below_baseline`` says so, in the live run
and again from its metrics.jsonl."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import healthcheck
from healthcheck.events import Severity, read_events
from healthcheck.monitor import judge_records
from healthcheck.record import read_records

N, BATCH, EPOCHS = 128, 16, 10


def train(run_dir, *, targets_from_inputs: bool):
    torch.manual_seed(0)
    X, Xv = torch.randn(N, 6), torch.randn(N, 6)
    w = torch.randn(6, 1)
    if targets_from_inputs:
        Y, Yv = X @ w + 0.1 * torch.randn(N, 1), Xv @ w + 0.1 * torch.randn(N, 1)
    else:  # nothing to learn: the best any model can do is the mean
        Y, Yv = torch.randn(N, 1), torch.randn(N, 1)
    constant = float(nn.functional.mse_loss(Y.mean().expand_as(Yv), Yv))  # the constant predictor's loss
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with healthcheck.TrainingHealth(model, opt, run_dir, console=False) as health:
        for _ in range(EPOCHS):
            for b in range(0, N, BATCH):
                loss = nn.functional.mse_loss(model(X[b:b + BATCH]), Y[b:b + BATCH])
                opt.zero_grad()
                loss.backward()
                health.after_backward(loss)
                opt.step()
                health.after_step()
            health.end_epoch()
            with torch.no_grad():
                val = nn.functional.mse_loss(model(Xv), Yv)
            health.evaluate(val, baselines={"loss": constant})
    return [e for e in read_events(run_dir / "health.jsonl") if e.code == "val.below_baseline"]


def test_a_model_that_learns_beats_the_constant_predictor_and_stays_quiet(tmp_path):
    assert train(tmp_path, targets_from_inputs=True) == []
    evals = [r for r in read_records(tmp_path / "metrics.jsonl") if r.kind == "eval"]
    assert len(evals) == EPOCHS and all("baseline/loss" in r.metrics for r in evals)
    assert evals[-1].loss < 0.1 * evals[-1].metrics["baseline/loss"]


def test_a_model_with_nothing_to_learn_is_flagged_live_and_offline(tmp_path):
    events = train(tmp_path, targets_from_inputs=False)
    assert events and {e.where for e in events} == {"loss"}
    assert max(e.severity for e in events) == Severity.ERROR  # 7 evaluations past the warm-up of 3
    offline = [e for e in judge_records(read_records(tmp_path / "metrics.jsonl")) if e.code == "val.below_baseline"]
    assert [(e.where, e.severity) for e in offline] == [("loss", Severity.ERROR)]


def test_higher_is_better_needs_a_declared_baseline(tmp_path):
    model = nn.Linear(2, 1)
    health = healthcheck.TrainingHealth(model, torch.optim.SGD(model.parameters(), lr=0.1), None, console=False)
    with pytest.raises(ValueError, match="acc"):
        health.evaluate(0.5, baselines={"loss": 0.6}, higher_is_better={"acc"})
    health.evaluate(0.5, metrics={"acc": 0.7}, baselines={"loss": 0.6, "acc": 0.5}, higher_is_better={"acc"})
    health.close()

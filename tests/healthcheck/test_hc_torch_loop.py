"""TrainingHealth in a real (tiny) loop: a 2-layer MLP regression on random data. A healthy
run must stay quiet; each injected fault must be named where it happens."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import healthcheck
import healthcheck.detectors as D
from healthcheck.events import Severity, read_events
from healthcheck.monitor import judge_records
from healthcheck.record import StepRecord, read_records

BATCHES, BATCH = 8, 16


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def forward(self, x, detach_encoder=False):
        h = self.encoder(x)
        return self.head(h.detach() if detach_encoder else h)


class BlowUpGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: an fp16 overflow in miniature."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * math.inf


def train(run_dir, fault=None, epochs=3, context="train", detectors=None, scaler=None):
    torch.manual_seed(0)
    X = torch.randn(BATCHES * BATCH, 6)
    Y = X @ torch.randn(6, 1) + 0.1 * torch.randn(BATCHES * BATCH, 1)
    model = MLP()
    params = model.encoder.parameters() if fault == "subset" else model.parameters()
    opt = torch.optim.Adam(params, lr=0.0 if fault == "lr0" else 1e-2)
    snapshots = []
    health = healthcheck.TrainingHealth(model, opt, run_dir, context=context, console=False,
                                        primary="mse", detectors=detectors, scaler=scaler)
    with health:
        for epoch in range(epochs):
            for b in range(BATCHES):
                x, y = X[b * BATCH:(b + 1) * BATCH], Y[b * BATCH:(b + 1) * BATCH]
                if fault == "nan" and epoch == 1 and b == 3:
                    x = x.clone()
                    x[0, 0] = math.nan
                snapshots.append([p.detach().clone() for p in model.parameters()])
                opt.zero_grad()
                out = model(x, detach_encoder=fault == "detached")
                if fault == "amp_overflow":
                    out = BlowUpGrad.apply(out)
                mse = (out - y).pow(2).mean()
                reg = out.abs().mean()
                weights = {"mse": 0.0 if fault == "weight0" else 1.0, "reg": 0.01}
                loss = weights["mse"] * mse + weights["reg"] * reg
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                health.after_backward(loss, terms={"mse": mse, "reg": reg}, weights=weights)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                health.after_step()
                if health.should_stop:
                    break
            if health.should_stop:
                break
            with torch.no_grad():
                health.evaluate((model(X) - Y).pow(2).mean())
            health.end_epoch()
    return health, model, snapshots, read_events(run_dir / "health.jsonl")


def found(events, min_severity=Severity.INFO):
    return {(e.code, e.where) for e in events if e.severity >= min_severity and e.code != "monitor.summary"}


def test_healthy_run_is_quiet_and_writes_the_run_dir(tmp_path):
    health, model, _, events = train(tmp_path)
    assert found(events, Severity.WARNING) == set()
    assert not health.should_stop
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kinds = [l["kind"] for l in lines]
    assert kinds.count("step") == 3 * BATCHES and kinds.count("eval") == 3 and kinds.count("epoch") == 3
    assert all(l["schema"] == 1 for l in lines)
    first = StepRecord.from_metrics_line(lines[0])
    assert first.terms.keys() == {"mse", "reg"} and first.weights == {"mse": 1.0, "reg": 0.01}
    assert first.loss == pytest.approx(first.terms["mse"] + 0.01 * first.terms["reg"], rel=1e-6)
    # per module that owns parameters: encoder's Linear, not the Sequential around it
    assert first.grad_norm.keys() == {"encoder.0", "head", "_total"} and first.update_norm["head"] > 0
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert modules["groups"] == {"encoder.0": ["encoder.0.weight", "encoder.0.bias"],
                                 "head": ["head.weight", "head.bias"]}
    assert (first.steps_taken, first.batches_seen, first.skipped) == (1, 1, False)
    assert events[-1].code == "monitor.summary"
    # the same metrics judged offline agree: nothing wrong
    assert found(judge_records(read_records(tmp_path / "metrics.jsonl")), Severity.WARNING) == set()


def test_zero_learning_rate(tmp_path):
    health, model, snaps, events = train(tmp_path, "lr0")
    got = found(events)
    # one cause (lr = 0 everywhere) freezes both modules at once: one event names both
    assert {("lr.zero", "group0"), ("param.frozen", "encoder.0, head"), ("val.constant", "val")} <= got
    assert not any(code == "param.frozen" and where in ("encoder.0", "head") for code, where in got)
    assert not health.should_stop  # errors warn in an interactive run
    offline = found(judge_records(read_records(tmp_path / "metrics.jsonl")))
    assert {("lr.zero", "group0"), ("param.frozen", "encoder.0, head"), ("val.constant", "val")} <= offline


def test_zero_learning_rate_stops_an_hpo_trial_early(tmp_path):
    health, _, snaps, _ = train(tmp_path, "lr0", context="hpo")
    assert health.should_stop and health.stop_reason.code == "lr.zero"
    assert len(snaps) == 2  # the second zero-lr step


def test_detached_layer_is_named(tmp_path):
    _, _, _, events = train(tmp_path, "detached")
    got = found(events, Severity.ERROR)
    assert ("grad.none", "encoder.0") in got and ("param.frozen", "encoder.0") in got
    assert not any(w == "head" for _, w in got)


def test_nan_batch_stops_before_the_step_reaches_the_weights(tmp_path):
    health, model, snaps, events = train(tmp_path, "nan")
    assert health.should_stop and health.stop_reason.severity is Severity.CRITICAL
    got = found(events, Severity.CRITICAL)
    assert ("loss.nonfinite", "mse") in got and ("grad.nonfinite", "encoder.0") in got
    for before, p in zip(snaps[-1], model.parameters()):  # optimizer.step() was a no-op
        assert torch.equal(before, p.detach())
    last = StepRecord.from_metrics_line(json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1]))
    assert last.skipped is True and last.step == BATCHES + 3


def test_zero_primary_weight_stops_at_step_zero(tmp_path):
    health, model, snaps, events = train(tmp_path, "weight0")
    assert health.stop_reason.code == "weights.primary_zero" and health.stop_reason.step == 0
    assert len(snaps) == 1 and all(torch.equal(a, b.detach()) for a, b in zip(snaps[0], model.parameters()))


def test_optimizer_over_a_subset(tmp_path):
    _, _, _, events = train(tmp_path, "subset")
    got = found(events, Severity.ERROR)
    assert ("param.not_in_optimizer", "head") in got and ("param.frozen", "head") in got
    assert ("param.frozen", "encoder.0") not in got


def test_amp_overflow_skips_steps_and_collapses_the_scale(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    detectors = [D.NonFiniteGrad(), D.AmpOverflow(window=6), D.AmpScaleCollapse(), D.SkippedSteps(window=6)]
    health, _, _, events = train(tmp_path, "amp_overflow", epochs=1, detectors=detectors, scaler=scaler)
    got = found(events)
    assert {("amp.overflow", "grad_scaler"), ("amp.scale_collapse", "grad_scaler"),
            ("steps.skipped", "optimizer")} <= got
    assert not any(code == "grad.nonfinite" for code, _ in got)  # the scaler handles non-finite grads
    first = read_records(tmp_path / "metrics.jsonl")[0]
    assert first.amp == {"scale": 8.0, "found_inf": True} and first.skipped is True


def test_raise_on_stop(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with healthcheck.TrainingHealth(model, opt, console=False, raise_on_stop=True) as health:
        loss = model(torch.randn(4, 6)).sum() * math.nan
        loss.backward()
        with pytest.raises(healthcheck.HealthStop, match="loss.nonfinite"):
            health.after_backward(loss)


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "100"])
def test_a_planned_length_that_is_not_a_positive_int_is_refused_in_one_sentence(bad):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"^total_steps must be a positive int .* but got total_steps="):
        healthcheck.TrainingHealth(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=bad)
    health = healthcheck.TrainingHealth(model, torch.optim.SGD(model.parameters(), lr=0.1), total_steps=100,
                                        console=False)
    assert health.live.planned_steps == 100
    health.close()

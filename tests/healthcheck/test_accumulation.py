"""Gradient accumulation end to end: a loop that applies one optimizer step every four
batches is healthy, its records count optimizer steps, and a step that really is skipped
is still caught. In a plain loop and in a real Lightning Trainer."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import healthcheck
import healthcheck.detectors as D
from healthcheck.cli import cli
from healthcheck.events import Severity, read_events
from healthcheck.record import read_records

ACCUMULATE, STEPS, BATCH = 4, 12, 8

# Lightning's own use of a deprecated torch pytree API; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*treespec.*")


def watch_status(run_dir):
    """`healthcheck watch RUN --once --json`: 0 healthy, 1 not."""
    res = CliRunner().invoke(cli, ["watch", str(run_dir), "--once", "--json"])
    assert res.exit_code in (0, 1), res.output
    return res.exit_code


def _data(n_batches):
    torch.manual_seed(0)
    X = torch.randn(n_batches * BATCH, 6)
    return X, X @ torch.randn(6, 1)


def plain_loop(run_dir, skip_every=None):
    """An accumulating loop; ``skip_every=k`` leaves out the optimizer step of every k-th group."""
    X, Y = _data(STEPS * ACCUMULATE)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with healthcheck.TrainingHealth(model, opt, run_dir, console=False, primary="mse") as health:
        for step in range(STEPS):
            opt.zero_grad()
            total, mse_sum = 0.0, 0.0
            for k in range(ACCUMULATE):
                b = step * ACCUMULATE + k
                x, y = X[b * BATCH:(b + 1) * BATCH], Y[b * BATCH:(b + 1) * BATCH]
                mse = (model(x) - y).pow(2).mean()
                (mse / ACCUMULATE).backward()
                total += mse.detach() / ACCUMULATE
                mse_sum += mse.detach()
            health.after_backward(total, terms={"mse": mse_sum / ACCUMULATE}, weights={"mse": 1.0},
                                  batches=ACCUMULATE)
            skip = skip_every is not None and step % skip_every == 0
            if not skip:
                opt.step()
            health.after_step(skipped=skip)
    return health


def test_plain_accumulating_loop_is_healthy_and_counts_optimizer_steps(tmp_path):
    health = plain_loop(tmp_path)
    events = read_events(tmp_path / "health.jsonl")
    assert [e for e in events if e.severity >= Severity.WARNING] == []
    steps = [r for r in read_records(tmp_path / "metrics.jsonl") if r.kind == "step"]
    assert [r.step for r in steps] == list(range(STEPS))
    assert [r.batches_seen for r in steps] == [ACCUMULATE * (i + 1) for i in range(STEPS)]
    assert health.steps_taken == STEPS and health.batches_seen == STEPS * ACCUMULATE
    assert watch_status(tmp_path) == 0  # re-judged from the files: still no steps.skipped


def test_plain_accumulating_loop_with_steps_left_out_is_caught(tmp_path):
    plain_loop(tmp_path, skip_every=1)  # no step applied at all
    events = [e for e in read_events(tmp_path / "health.jsonl") if e.code == "steps.skipped"]
    assert events and events[0].severity == Severity.ERROR and events[0].step == 1


def test_skipped_steps_counts_attempts_not_batches():
    from hc_fakes import healthy_step, run

    accumulating = [healthy_step(i, steps_taken=i + 1, batches_seen=4 * (i + 1)) for i in range(40)]
    assert run(D.SkippedSteps(), accumulating) == []
    half = [healthy_step(i, steps_taken=i // 3 + 1, batches_seen=4 * (i + 1)) for i in range(40)]
    events = run(D.SkippedSteps(), half)
    assert events and {e.severity for e in events} == {Severity.WARNING}


def test_after_backward_rejects_a_bad_batch_count(tmp_path):
    model = nn.Linear(2, 1)
    health = healthcheck.TrainingHealth(model, torch.optim.SGD(model.parameters(), lr=0.1), console=False)
    with pytest.raises(ValueError, match="batches=0"):
        health.after_backward(1.0, batches=0)


def test_lightning_accumulate_grad_batches_is_healthy(tmp_path):
    L = pytest.importorskip("lightning")
    from healthcheck.integrations.lightning import HealthCallback

    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))

        def training_step(self, batch, idx):
            x, y = batch
            mse = (self.net(x) - y).pow(2).mean()
            self.health_terms, self.health_weights = {"mse": mse}, {"mse": 1.0}
            return mse

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    X, Y = _data(STEPS * ACCUMULATE)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=BATCH)
    cb = HealthCallback(tmp_path, primary="mse", console=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                        accumulate_grad_batches=ACCUMULATE)
    trainer.fit(Regressor(), loader)
    events = read_events(tmp_path / "health.jsonl")
    assert [e for e in events if e.severity >= Severity.WARNING] == []
    steps = [r for r in read_records(tmp_path / "metrics.jsonl") if r.kind == "step"]
    assert trainer.global_step == STEPS
    assert [r.step for r in steps] == list(range(STEPS))
    assert steps[-1].batches_seen == STEPS * ACCUMULATE
    # the loss is the mean over the step's batches, as the terms are (no loss.sum_mismatch)
    assert all(r.loss == pytest.approx(r.terms["mse"], rel=1e-5) for r in steps)
    assert watch_status(tmp_path) == 0

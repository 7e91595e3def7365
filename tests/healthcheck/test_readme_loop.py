"""The plain-loop example on the README's front page, run exactly as it is written: a
complete loop with accumulation, clipping and validation that a user copies must train
healthy and write the run directory the docs describe. Also: an exception inside the
``with`` block is recorded and the logs are closed, and a ``torch.compile``d training step
may call the monitor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import healthcheck
from healthcheck.cli import cli
from healthcheck.events import Severity, read_events
from healthcheck.record import read_records

README = Path(__file__).resolve().parents[2] / "README.md"
BATCHES, BATCH, EPOCHS, ACCUMULATE = 8, 16, 3, 4  # what the README's block uses (3 epochs, 4 batches per step)


def watch_status(run_dir):
    """`healthcheck watch RUN --once --json`: 0 healthy, 1 not."""
    res = CliRunner().invoke(cli, ["watch", str(run_dir), "--once", "--json"])
    assert res.exit_code in (0, 1), res.output
    return res.exit_code


def readme_loop() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    loops = [b for b in blocks if "TrainingHealth(model, optimizer" in b]
    assert len(loops) == 1, "the README should hold exactly one plain-loop example"
    return loops[0]


def inputs(train_loader=None):
    """What the README's block is given: a model, an optimizer and two loaders."""
    torch.manual_seed(0)
    X = torch.randn((BATCHES + 2) * BATCH, 6)
    Y = X @ torch.randn(6, 1) + 0.05 * torch.randn(len(X), 1)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 1))
    batches = [(X[i * BATCH:(i + 1) * BATCH], Y[i * BATCH:(i + 1) * BATCH]) for i in range(BATCHES + 2)]
    return {"model": model, "optimizer": torch.optim.Adam(model.parameters(), lr=1e-2),
            "train_loader": batches[:BATCHES] if train_loader is None else train_loader(batches[:BATCHES]),
            "val_loader": batches[BATCHES:]}


def run_readme(tmp_path, monkeypatch, **given):
    monkeypatch.chdir(tmp_path)
    namespace = inputs(**given)
    exec(compile(readme_loop(), str(README), "exec"), namespace)  # noqa: S102 - the documented example
    return namespace, tmp_path / "runs" / "mine"


def test_the_readme_loop_runs_as_written_and_trains_healthy(tmp_path, monkeypatch, capsys):
    namespace, run_dir = run_readme(tmp_path, monkeypatch)
    events = read_events(run_dir / "health.jsonl")
    assert [e.line() for e in events if e.severity >= Severity.WARNING] == []
    assert events[-1].code == "monitor.summary"
    records = read_records(run_dir / "metrics.jsonl")
    steps = [r for r in records if r.kind == "step"]
    per_epoch = BATCHES // ACCUMULATE
    assert [r.step for r in steps] == list(range(EPOCHS * per_epoch))  # optimizer steps
    assert [r.batches_seen for r in steps] == [ACCUMULATE * (i + 1) for i in range(EPOCHS * per_epoch)]
    assert [r.kind for r in records if r.kind != "step"] == ["eval", "epoch"] * EPOCHS
    evals = [r.loss for r in records if r.kind == "eval"]
    assert evals[-1] < evals[0]  # it learns
    health = namespace["health"]
    assert health.steps_taken == EPOCHS * per_epoch and health.monitor.closed
    assert watch_status(run_dir) == 0


def test_an_exception_in_the_loop_is_recorded_and_the_logs_closed(tmp_path, monkeypatch):
    def breaks_at_batch_6(batches):
        for i, batch in enumerate(batches):
            if i == 6:
                raise OSError("the data volume went away")
            yield batch

    with pytest.raises(OSError, match="data volume went away"):
        run_readme(tmp_path, monkeypatch, train_loader=breaks_at_batch_6)
    run_dir = tmp_path / "runs" / "mine"
    events = read_events(run_dir / "health.jsonl")
    crash = [e for e in events if e.code == "run.crashed"]
    assert len(crash) == 1 and crash[0].severity == Severity.ERROR
    assert crash[0].where == "OSError" and "data volume went away" in crash[0].title
    assert crash[0].step == 1  # one optimizer step made (batches 0-3), the second never completed
    assert events[-1].code == "monitor.summary"  # closed cleanly after the crash was recorded
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(read_records(run_dir / "metrics.jsonl")) == 1  # no torn line
    assert watch_status(run_dir) == 1  # the crash is an error: not a healthy run


def test_a_stop_or_an_interrupt_is_not_a_crash(tmp_path):
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyboardInterrupt):
        with healthcheck.TrainingHealth(model, opt, tmp_path, console=False):
            raise KeyboardInterrupt
    codes = [e.code for e in read_events(tmp_path / "health.jsonl")]
    assert codes == ["monitor.summary"]


def compiled_run(run_dir, backend):
    torch._dynamo.reset()
    namespace = inputs()
    model, optimizer = namespace["model"], namespace["optimizer"]
    mse = torch.nn.functional.mse_loss
    with healthcheck.TrainingHealth(model, optimizer, run_dir, console=False, primary="mse") as health:

        @torch.compile(backend=backend)
        def train_step(x, y):
            loss = mse(model(x), y)
            loss.backward()
            health.after_backward(loss, terms={"mse": loss}, weights={"mse": 1.0})
            optimizer.step()
            optimizer.zero_grad()
            health.after_step()
            return loss

        for x, y in namespace["train_loader"]:
            train_step(x, y)
    assert health.steps_taken == BATCHES
    steps = [r for r in read_records(run_dir / "metrics.jsonl") if r.kind == "step"]
    assert [r.step for r in steps] == list(range(BATCHES)) and all(r.grad_norm["_total"] > 0 for r in steps)
    assert [e.code for e in read_events(run_dir / "health.jsonl") if e.severity >= Severity.WARNING] == []


def test_a_compiled_training_step_leaves_the_monitor_out_of_its_graphs(tmp_path):
    graphs = []

    def recording_backend(gm, example_inputs):  # dynamo's graphs, run as they are
        graphs.append(gm)
        return gm.forward

    compiled_run(tmp_path, recording_backend)
    assert graphs  # the user's step was compiled
    # the monitor's measurement (fused norms, values stacked for one host read) is not traced;
    # the step itself uses neither
    traced = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert not [t for t in traced if "_foreach_norm" in t or "stack" in t], sorted(traced)


@pytest.mark.slow
def test_a_compiled_training_step_runs_with_the_default_backend(tmp_path):
    compiled_run(tmp_path, "inductor")  # code generation: ~30 s with a cold compile cache on 2 cores

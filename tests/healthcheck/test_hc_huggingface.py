"""HealthCallback in a real Hugging Face ``Trainer``: a tiny GPT-2 built from a config (no
download) trains healthy with gradient accumulation, and a zero learning rate and a NaN
from step k are caught, the NaN before the optimizer applies it."""

from __future__ import annotations

import importlib
import math
import sys
import types

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from healthcheck.cli import cli
from healthcheck.events import Severity, read_events
from healthcheck.record import read_records

ACCUMULATE = 4


def watch_status(run_dir):
    """`healthcheck watch RUN --once --json`: 0 healthy, 1 not."""
    res = CliRunner().invoke(cli, ["watch", str(run_dir), "--once", "--json"])
    assert res.exit_code in (0, 1), res.output
    return res.exit_code


def test_module_imports_without_transformers_and_explains_when_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "healthcheck.integrations.huggingface", raising=False)
    mod = importlib.import_module("healthcheck.integrations.huggingface")
    with pytest.raises(ImportError, match="transformers 4.42"):
        _ = mod.HealthCallback
    monkeypatch.delitem(sys.modules, "healthcheck.integrations.huggingface")


class Tokens(torch.utils.data.Dataset):
    """Sequences that count up modulo the vocabulary: learnable in a few steps."""

    def __init__(self, n, length=16, vocab=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab, (n, 1), generator=g)
        self.ids = (start + torch.arange(length)) % vocab

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Regressor(nn.Module):
    """A plain module returning ``{"loss": ...}``, as the Trainer accepts; ``nan_from``
    makes every loss NaN from that many training forwards on."""

    def __init__(self, nan_from=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.nan_from, self.calls = nan_from, 0

    def forward(self, x, y):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.nan_from is not None and self.calls > self.nan_from:
                out = out * math.nan
        return {"loss": (out - y).pow(2).mean()}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=64):
        torch.manual_seed(0)
        self.x = torch.randn(n, 4)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def train(tmp_path, model, data, eval_data=None, **args):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from healthcheck.integrations.huggingface import HealthCallback

    settings = dict(output_dir=str(tmp_path / "hf"), report_to="none", use_cpu=True, disable_tqdm=True,
                    save_strategy="no", logging_steps=1, per_device_train_batch_size=4, learning_rate=1e-3,
                    num_train_epochs=1, seed=0)
    settings.update(args)
    if eval_data is not None:
        settings["eval_strategy"] = "epoch"
    cb = HealthCallback(tmp_path / "run", console=False)
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(**settings),
                                   train_dataset=data, eval_dataset=eval_data, callbacks=[cb])
    trainer.train()
    return trainer, cb, read_events(tmp_path / "run" / "health.jsonl")


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def test_tiny_gpt2_with_accumulation_trains_healthy(tmp_path):
    trainer, cb, events = train(tmp_path, tiny_gpt2(), Tokens(128), Tokens(16, seed=1), num_train_epochs=2,
                                gradient_accumulation_steps=ACCUMULATE, learning_rate=3e-3)
    assert [e.line() for e in events if e.severity >= Severity.WARNING] == []
    assert events[-1].code == "monitor.summary"
    records = read_records(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if r.kind == "step"]
    assert trainer.state.global_step == len(steps) == 2 * 128 // (4 * ACCUMULATE)
    assert cb.health.live.planned_steps == trainer.state.max_steps == len(steps)  # for lr.spent_early
    assert [r.step for r in steps] == list(range(len(steps)))  # optimizer steps, as global_step
    assert [r.batches_seen for r in steps] == [ACCUMULATE * (i + 1) for i in range(len(steps))]
    # norms per module inside GPT-2's one `transformer` container, each block's attention named
    assert all(r.grad_norm[f"transformer.h.{i}.attn.c_attn"] > 0 and r.lr for r in steps for i in range(2))
    assert steps[-1].loss < steps[0].loss  # the recorded loss is the model's, and it falls
    evals = [r for r in records if r.kind == "eval"]
    assert len(evals) == 2 and all(math.isfinite(r.loss) for r in evals)
    # the recorded loss is the Trainer's own: its logged training loss of the first step
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h and h.get("step") == 1]
    assert logged and steps[0].loss == pytest.approx(logged[0], rel=1e-3)
    assert watch_status(tmp_path / "run") == 0


def test_zero_learning_rate_is_named(tmp_path):
    _, _, events = train(tmp_path, Regressor(), Pairs(), learning_rate=0.0, num_train_epochs=2)
    got = {(e.code, e.where) for e in events}
    assert ("lr.zero", "group0") in got and ("param.frozen", "net.0, net.2") in got  # one event, both modules


def test_nan_from_step_k_stops_before_the_optimizer_applies_it(tmp_path):
    model = Regressor(nan_from=5)
    trainer, cb, events = train(tmp_path, model, Pairs(), num_train_epochs=3)
    assert cb.health.stop_reason is not None and cb.health.stop_reason.code == "loss.nonfinite"
    assert cb.health.stop_reason.step == 5  # the sixth step, the first NaN
    assert trainer.state.global_step < 3 * 64 // 4  # stopped early
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert watch_status(tmp_path / "run") == 1


def test_baselines_from_compute_metrics_are_judged(tmp_path):
    pytest.importorskip("transformers")
    import healthcheck
    from healthcheck.integrations.huggingface import HealthCallback, _take_baselines

    metrics = {"eval_accuracy": 0.4, "eval_baseline_max_accuracy": 0.5, "eval_baseline_loss": 0.7}
    assert _take_baselines(metrics) == ({"eval_accuracy": 0.5, "loss": 0.7}, {"eval_accuracy"})
    assert metrics == {"eval_accuracy": 0.4}

    model = torch.nn.Linear(2, 1)
    cb = HealthCallback(tmp_path, console=False)
    cb.health = healthcheck.TrainingHealth(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path,
                                           console=False)
    control = types.SimpleNamespace(should_training_stop=False)
    for _ in range(4):  # accuracy below its baseline past the warm-up; the loss beats its own
        cb.on_evaluate(None, None, control, metrics={"eval_loss": 0.5, "eval_accuracy": 0.4,
                                                     "eval_baseline_max_accuracy": 0.5, "eval_baseline_loss": 0.7})
    cb.health.close()
    found = [(e.code, e.where) for e in read_events(tmp_path / "health.jsonl") if e.code == "val.below_baseline"]
    assert found == [("val.below_baseline", "eval_accuracy")]

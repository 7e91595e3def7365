from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch
from torch import nn

from healthcheck.events import Severity, read_events

# Lightning's own use of a deprecated torch pytree API; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*treespec.*")


def test_module_imports_without_lightning_and_explains_when_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    monkeypatch.delitem(sys.modules, "healthcheck.integrations.lightning", raising=False)
    mod = importlib.import_module("healthcheck.integrations.lightning")
    with pytest.raises(ImportError, match="pip install lightning"):
        _ = mod.HealthCallback
    monkeypatch.delitem(sys.modules, "healthcheck.integrations.lightning")


def _fit(tmp_path, fault=None, max_epochs=2, baselines=None):
    L = pytest.importorskip("lightning")
    from healthcheck.integrations.lightning import HealthCallback

    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
            self.head = nn.Linear(8, 1)
            self.health_baselines = baselines

        def forward(self, x):
            return self.head(self.encoder(x))

        def training_step(self, batch, idx):
            x, y = batch
            if fault == "crash" and self.global_step == 3:
                raise ValueError("a corrupt sample")
            if fault == "nan" and self.global_step == 5:
                x = x.clone()
                x[0, 0] = math.nan
            mse = (self(x) - y).pow(2).mean()
            self.health_terms = {"mse": mse}
            self.health_weights = {"mse": 1.0}
            return mse

        def validation_step(self, batch, idx):
            x, y = batch
            self.log("val_loss", (self(x) - y).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0 if fault == "lr0" else 0.05)

    torch.manual_seed(0)
    X = torch.randn(64, 4)
    ds = torch.utils.data.TensorDataset(X, X.sum(dim=1, keepdim=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    cb = HealthCallback(tmp_path, primary="mse", console=False)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
                        num_sanity_val_steps=0)
    trainer.fit(Regressor(), loader, loader)
    return trainer, cb, read_events(tmp_path / "health.jsonl")


def test_callback_healthy_fit_is_quiet(tmp_path):
    trainer, cb, events = _fit(tmp_path)
    assert [e for e in events if e.severity >= Severity.WARNING] == []
    assert events[-1].code == "monitor.summary"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind":"step"' in l for l in lines) == 16 and sum('"kind":"eval"' in l for l in lines) == 2
    assert cb.health.steps_taken == trainer.global_step == 16
    assert cb.health.live.planned_steps == trainer.estimated_stepping_batches == 16  # for lr.spent_early


def test_callback_judges_the_validation_loss_against_the_modules_baseline(tmp_path):
    _, _, events = _fit(tmp_path, max_epochs=4, baselines={"val_loss": 0.0})  # nothing beats 0
    assert [(e.code, e.where) for e in events if e.code == "val.below_baseline"] == [("val.below_baseline", "loss")]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum('"baseline/loss":0.0' in line for line in lines) == 4
    _, _, events = _fit(tmp_path / "beaten", max_epochs=4, baselines={"val_loss": 1e6})
    assert [e for e in events if e.code == "val.below_baseline"] == []


def test_callback_zero_lr_is_named(tmp_path):
    _, _, events = _fit(tmp_path, "lr0", max_epochs=3)
    got = {(e.code, e.where) for e in events}
    frozen = {where for code, where in got if code == "param.frozen"}
    assert {("lr.zero", "group0"), ("val.constant", "val")} <= got
    assert len(frozen) == 1 and "head" in frozen.pop().split(", ")  # one event for the one cause


def test_callback_stops_the_trainer_before_a_nan_step(tmp_path):
    trainer, cb, events = _fit(tmp_path, "nan", max_epochs=3)
    assert trainer.should_stop and cb.health.stop_reason.code == "loss.nonfinite"
    assert trainer.global_step < 24
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())


def test_callback_records_a_crash_and_closes_the_log(tmp_path):
    with pytest.raises(ValueError, match="corrupt sample"):
        _fit(tmp_path, "crash")
    events = read_events(tmp_path / "health.jsonl")
    crash = [e for e in events if e.code == "run.crashed"]
    assert len(crash) == 1 and crash[0].where == "ValueError" and crash[0].step == 3
    assert events[-1].code == "monitor.summary"

"""`watch` on the folders Lightning's CSVLogger writes, from a real (tiny) Lightning fit."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from healthcheck.cli import cli
from healthcheck.events import read_events

# Lightning's own use of a deprecated torch pytree API; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*treespec.*")


def fit(save_dir, health_dir, nan_at=None):
    """Two epochs of 8 batches, logged by CSVLogger(save_dir, name="exp") and judged by
    the HealthCallback into ``health_dir``; a NaN input at global step ``nan_at``."""
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    from healthcheck.integrations.lightning import HealthCallback

    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, idx):
            x, y = batch
            if self.global_step == nan_at:
                x = x.clone()
                x[0, 0] = math.nan
            loss = (self.net(x) - y).pow(2).mean()
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, idx):
            x, y = batch
            self.log("val_loss", (self.net(x) - y).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    logger = CSVLogger(str(save_dir), name="exp")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=logger, log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[HealthCallback(health_dir, console=False)], num_sanity_val_steps=0)
    trainer.fit(Regressor(), loader, loader)
    return logger.log_dir


def watch(path, *args):
    res = CliRunner().invoke(cli, ["watch", str(path), "--json", *args])
    return res, json.loads(res.stdout) if res.stdout.strip() else None


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """save_dir/exp/version_0 (healthy) and version_1 (NaN from global step 5), written in that order."""
    root = tmp_path_factory.mktemp("lightning")
    healthy = fit(root / "logs", root / "health0")
    time.sleep(0.05)  # distinct modification times even on coarse clocks
    broken = fit(root / "logs", root / "health1", nan_at=5)
    return root, healthy, broken


@pytest.mark.parametrize("folder", ["logs", "logs/exp"])  # CSVLogger's save_dir, and save_dir/name
def test_watch_on_the_logger_folder_reads_the_newest_version_and_says_which(two_versions, folder):
    root, _, broken = two_versions
    res, v = watch(root / folder)
    assert res.exit_code == 1, res.output  # version_1 has the NaN; version_0 would be healthy
    assert v["reader"]["format"] == "csv"
    assert "loss.nonfinite" in {e["code"] for e in v["events"]}
    said = res.stderr.strip().splitlines()
    assert len(said) == 1 and os.path.join("version_1", "metrics.csv") in said[0] and "newest of 2" in said[0]


def test_watch_on_one_version_says_nothing_extra(two_versions):
    _, healthy, _ = two_versions
    res, v = watch(healthy)
    assert res.exit_code == 0 and v["healthy"] and res.stderr == ""


def test_callback_events_and_the_csv_name_the_same_step(two_versions):
    root, _, broken = two_versions
    monitor = [e for e in read_events(root / "health1" / "health.jsonl") if e.code == "loss.nonfinite"]
    _, v = watch(broken)
    from_csv = [e for e in v["events"] if e["code"] == "loss.nonfinite"]
    assert [e.step for e in monitor] == [5]
    assert [e["step"] for e in from_csv] == [5]


def test_eval_and_epoch_lines_carry_the_step_the_csv_gives_them(two_versions):
    """Epoch-end results are stamped with the last step's index in both files."""
    import csv

    root, healthy, _ = two_versions
    ours = [json.loads(line) for line in (root / "health0" / "metrics.jsonl").read_text().splitlines()]
    evals = [line["step"] for line in ours if line["kind"] == "eval"]
    epochs = [line["step"] for line in ours if line["kind"] == "epoch"]
    with open(os.path.join(healthy, "metrics.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    csv_evals = [int(r["step"]) for r in rows if r.get("val_loss")]
    assert evals == csv_evals == [7, 15]  # two epochs of 8 optimizer steps
    assert epochs == [7, 15]

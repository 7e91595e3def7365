"""`healthcheck watch` and `healthcheck report` on runs that really trained.

The tests in tests/watch/ judge files written by hand; these judge what `ris-model train`
and a Lightning `CSVLogger` write, so a drift between a writer and the readers (a renamed
field, a new row layout) fails here. Every expectation is read from the run's own files
(metrics.jsonl, health.jsonl, metrics.csv) with the standard library, not taken from the
code under test.
"""

from __future__ import annotations

import base64
import csv
import json
import re
from html import escape
from pathlib import Path

import pytest
from click.testing import CliRunner

from healthcheck.cli import cli
from ris_model.cli import main as ris_model_cli

SEVERITIES = ("info", "warning", "error", "critical")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# 128 scenes in batches of 16, two epochs: 16 steps, two evaluations, ~2 s on one thread.
TINY_RUN = ["--preset", "tiny", "--epochs", "2", "--set", "train.train_scenes=128",
            "--set", "train.val_scenes=32", "--set", "train.batch_size=16", "--set", "model.width=32",
            "--wandb", "off", "--eval-n", "0"]


# ------------------------------------------------------------------------------ helpers
def train(run_dir: Path, *extra: str):
    return CliRunner().invoke(ris_model_cli, ["train", "--run-dir", str(run_dir), *TINY_RUN, *extra])


def watch(run_dir: Path, *extra: str, env: dict | None = None):
    """`healthcheck watch RUN --once --json`: (exit status, verdict)."""
    res = CliRunner().invoke(cli, ["watch", str(run_dir), "--once", "--json", *extra], env=env)
    assert res.exit_code in (0, 1), res.output
    return res.exit_code, json.loads(res.stdout)


def report(run_dir: Path, out: Path, *extra: str) -> str:
    res = CliRunner().invoke(cli, ["report", str(run_dir), "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    return out.read_text(encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def at_or_above(severity: str, threshold: str) -> bool:
    return SEVERITIES.index(severity) >= SEVERITIES.index(threshold)


def assert_self_contained(html: str, png_dir: Path) -> None:
    """Every figure is in the page as a data URI, byte for byte the PNG written alongside,
    and nothing is fetched from elsewhere."""
    embedded = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]
    on_disk = sorted(png_dir.glob("*.png"))
    assert embedded and len(embedded) == len(on_disk) == html.count("<img")
    assert all(png.startswith(PNG_MAGIC) for png in embedded)
    assert sorted(embedded) == sorted(p.read_bytes() for p in on_disk)
    assert not re.search(r'(src|href)="(?!data:)', html)


def assert_fail_on_follows_the_events(run_dir: Path, events: list[dict], env: dict | None = None) -> None:
    """`--fail-on X` exits 1 exactly when an event at X or worse is in the verdict."""
    for threshold in ("warning", "error", "critical"):
        code, _ = watch(run_dir, "--fail-on", threshold, env=env)
        assert code == int(any(at_or_above(e["severity"], threshold) for e in events)), threshold


# ------------------------------------------------------------------- ris-model train
def test_a_healthy_run_is_judged_healthy_and_reported(tmp_path):
    run = tmp_path / "run"
    assert train(run).exit_code == 0
    lines = read_jsonl(run / "metrics.jsonl")
    last_step = [line for line in lines if line["kind"] == "step"][-1]
    last_eval = [line for line in lines if line["kind"] == "eval"][-1]
    monitor_says = [e for e in read_jsonl(run / "health.jsonl") if e["severity"] != "info"]
    assert monitor_says == []

    code, verdict = watch(run)
    assert code == 0 and verdict["healthy"] is True
    assert verdict["worst_severity"] in (None, "info")
    reader = verdict["reader"]
    assert (reader["format"], reader["lines"], reader["bad_lines"]) == ("jsonl", len(lines), 0)
    assert verdict["last"]["step"] == last_step["step"] and verdict["last"]["loss"] == last_step["loss"]
    assert verdict["last"]["val_loss"] == last_eval["loss"]
    assert verdict["last"]["weights"] == last_step["weights"]
    assert not [e for e in verdict["events"] if at_or_above(e["severity"], "warning")]
    assert_fail_on_follows_the_events(run, verdict["events"])

    html = report(run, tmp_path / "pages" / "run.html")
    assert_self_contained(html, run / "report")
    assert ">healthy<" in html and "unhealthy" not in html
    assert f"{last_step['step']} / {last_step['epoch']}" in html  # the last step / epoch row


def test_the_monitors_error_event_fails_watch_and_shows_in_the_report(tmp_path, primary_dropped_at_run_time):
    run = tmp_path / "run"
    assert train(run).exit_code == 1  # the monitor stopped the run
    fatal = [e for e in read_jsonl(run / "health.jsonl") if at_or_above(e["severity"], "error")]
    assert fatal, "the monitor wrote no error event: the fault did not act"

    code, verdict = watch(run)
    assert code == 1 and verdict["healthy"] is False
    shown = {(e["code"], e["where"]): e for e in verdict["events"]}
    for e in fatal:
        assert shown[(e["code"], e["where"])]["source"] == "monitor"
        assert shown[(e["code"], e["where"])]["severity"] == e["severity"]
    assert verdict["worst_severity"] == max((e["severity"] for e in fatal), key=SEVERITIES.index)
    assert_fail_on_follows_the_events(run, verdict["events"])

    html = report(run, run / "report.html")
    assert_self_contained(html, run / "report")
    assert "unhealthy" in html
    for e in fatal:
        assert f"<code>{e['code']}</code>" in html and escape(e["title"]) in html


def primary_weight_is_zero(step: dict) -> bool:
    return step["weights"]["cov"] == 0


def every_lr_is_zero(step: dict) -> bool:
    return all(lr == 0 for lr in step["lr"])


@pytest.mark.parametrize("fault, visible_in_metrics, code, where", [
    ("primary weight dropped at run time", primary_weight_is_zero, "weights.primary_zero", "cov"),
    ("lr_zero", every_lr_is_zero, "lr.zero", None),
], ids=["primary_weight_dropped", "lr_zero"])
def test_watch_judges_a_run_trained_without_the_monitor(tmp_path, inject_fault, fault, visible_in_metrics,
                                                        code, where):
    inject_fault(fault)
    run = tmp_path / "run"
    assert train(run, "--no-health").exit_code == 0  # nothing stopped it
    assert [e for e in read_jsonl(run / "health.jsonl") if e["code"] != "monitor.summary"] == []
    steps = [line for line in read_jsonl(run / "metrics.jsonl") if line["kind"] == "step"]
    assert steps and all(visible_in_metrics(step) for step in steps)  # the fault acted, in the metrics only

    exit_code, verdict = watch(run)
    assert exit_code == 1 and verdict["healthy"] is False
    found = [e for e in verdict["events"] if e["code"] == code]
    assert found and all(e["source"] == "watch" for e in verdict["events"])
    assert where is None or found[0]["where"] == where
    assert at_or_above(found[0]["severity"], "error")

    # the same fault graded down by the user's policy: now only --fail-on warning fails
    regraded = {"HEALTHCHECK_REGRADE": ",".join(sorted({f"{e['code']}=warning" for e in verdict["events"]}))}
    assert watch(run, env=regraded)[0] == 0
    assert watch(run, "--fail-on", "warning", env=regraded)[0] == 1

    html = report(run, run / "report.html")
    assert_self_contained(html, run / "report")
    assert "unhealthy" in html and f"<code>{code}</code>" in html


@pytest.fixture
def inject_fault(request, catalogue_fault):
    """Injects the named catalogue fault, or the seed fault (the run-time weight drop)."""
    def inject(name: str) -> None:
        if name == "primary weight dropped at run time":
            request.getfixturevalue("primary_dropped_at_run_time")
        else:
            catalogue_fault(name)
    return inject


# ----------------------------------------------------------------------- Lightning
# Lightning's own use of a deprecated torch API; nothing the tests can act on.
quiet_lightning = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")


def lightning_fit(root: Path, *, lr: float, loss_scale: float = 1.0, steps: int = 40) -> Path:
    """A linear regression fitted by Lightning, logged by CSVLogger; returns its log dir."""
    L = pytest.importorskip("lightning")
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    class Regression(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y) * loss_scale
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen) + 0.01 * torch.randn(256, 1, generator=gen)
    data = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(1))
    trainer = L.Trainer(max_steps=steps, logger=CSVLogger(root, name="lightning_logs"), log_every_n_steps=1,
                        callbacks=[LearningRateMonitor()], accelerator="cpu", devices=1,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Regression(), data)
    return Path(trainer.logger.log_dir)


def csv_rows(log_dir: Path, column: str) -> list[dict]:
    with open(log_dir / "metrics.csv", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get(column)]


@quiet_lightning
def test_a_healthy_lightning_run_is_judged_and_reported(tmp_path):
    log_dir = lightning_fit(tmp_path, lr=0.05)
    losses = csv_rows(log_dir, "train_loss")
    assert float(losses[-1]["train_loss"]) < 0.1 * float(losses[0]["train_loss"])  # it learned

    code, verdict = watch(log_dir)  # the format and the loss column found on their own
    assert code == 0 and verdict["healthy"] is True and verdict["reader"]["format"] == "csv"
    assert verdict["last"]["step"] == int(losses[-1]["step"])
    assert verdict["last"]["loss"] == pytest.approx(float(losses[-1]["train_loss"]))
    assert verdict["last"]["lr"] == [pytest.approx(0.05)]
    assert verdict["reader"]["lines"] >= len(losses)

    html = report(log_dir.parent, tmp_path / "lightning.html")  # lightning_logs/ finds version_0/
    assert_self_contained(html, log_dir.parent / "report")
    assert "unhealthy" not in html


@quiet_lightning
@pytest.mark.parametrize("fault, lr, loss_scale, fail_on, code", [
    ("learning rate 0", 0.0, 1.0, "error", "lr.zero"),
    # no weights or terms in a CSV log to contradict a zero total: the loss is only constant
    ("loss multiplied by 0", 0.05, 0.0, "warning", "loss.constant"),
])
def test_a_faulty_lightning_run_fails_watch_and_shows_in_the_report(tmp_path, fault, lr, loss_scale,
                                                                    fail_on, code):
    log_dir = lightning_fit(tmp_path, lr=lr, loss_scale=loss_scale)
    exit_code, verdict = watch(log_dir, "--format", "csv", "--loss-key", "train_loss", "--fail-on", fail_on)
    assert exit_code == 1 and verdict["healthy"] is False, verdict["events"]
    assert code in {e["code"] for e in verdict["events"] if at_or_above(e["severity"], fail_on)}

    html = report(log_dir, tmp_path / "lightning.html", "--loss-key", "train_loss")
    assert_self_contained(html, log_dir / "report")
    assert f"<code>{code}</code>" in html


# ----------------------------------------------------------------------- usage errors
# A missing run dir (both commands) and an unrelated dir given to `watch` are in tests/watch/.
@pytest.mark.parametrize("command, given, needle", [
    ("watch", "metrics file", "is a file"),
    ("report", "metrics file", "is a file"),
    ("report", "unrelated dir", "holds no metrics.jsonl"),
])
def test_a_path_that_is_no_run_dir_exits_2(tmp_path, command, given, needle):
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("")
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "todo.txt").write_text("not a run")
    res = CliRunner().invoke(cli, [command, str(metrics if given == "metrics file" else unrelated)])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output

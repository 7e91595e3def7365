"""`healthcheck weights RUN_DIR` on real short runs: values, sources and changes as the
run's config says they were set, and the seed bug's overwrite flagged as unrecorded."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from healthcheck.weights_view import WeightsViewError, read_weights, weights_command, weights_table
from ris_model.batches import build_scenes
from ris_model.config import load_config
from ris_model.training.callbacks import Callback
from ris_model.training.train import Trainer

SCENES, BATCH = 32, 16  # two steps per epoch
PHASE = {"start_epoch": 1, "weights": {"peak": 0.7}}
ARGS = ["model.width=16", "model.depth=1", "train.epochs=2", f"train.batch_size={BATCH}",
        f"train.train_scenes={SCENES}", "train.val_scenes=16", "loss.weights.subspace=0.4",
        f"loss.schedule={json.dumps([PHASE])}"]


class ZeroPrimaryAtStep(Callback):
    """The seed bug: 0 written into the live loss, bypassing the trainer's record."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_start(self, trainer, batch_index) -> None:
        if trainer.state.batches_seen == self.step:
            object.__setattr__(trainer.loss_fn.weights, "cov", 0.0)


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", overrides=ARGS)


@pytest.fixture(scope="module")
def runs(cfg, tmp_path_factory):
    data = build_scenes(cfg.system, SCENES, seed=5)
    out = {}
    for name, callbacks in (("scheduled", []), ("overwritten", [ZeroPrimaryAtStep(1)])):
        run_dir = tmp_path_factory.mktemp(name)
        Trainer(cfg, run_dir, device="cpu", callbacks=callbacks, train_scenes=data,
                val_scenes=data.take(slice(0, 16))).fit()
        out[name] = run_dir
    return out


def _rows(view):
    return {row.term: row for row in view.terms}


def test_values_sources_and_scheduled_changes_follow_the_config(runs, cfg):
    view = read_weights(runs["scheduled"])
    rows = _rows(view)
    steps_per_epoch = SCENES // BATCH
    assert view.primary == "cov" and rows["cov"].primary and not rows["peak"].primary
    assert view.last_step == 2 * steps_per_epoch - 1
    assert rows["subspace"].value == 0.4 and rows["subspace"].source == "cli" and rows["subspace"].changes == []
    assert rows["cov"].value == cfg.loss.weights.cov and rows["cov"].source == "default"
    peak = rows["peak"]
    assert peak.configured == cfg.loss.weights.peak and peak.value == 0.7
    assert peak.source == "schedule:phase 0@epoch 1"
    assert [(c.value, c.step, c.epoch, c.recorded) for c in peak.changes] == [(0.7, steps_per_epoch, 1, True)]
    assert not any(row.unrecorded for row in view.terms)


def test_an_overwrite_outside_the_trainer_is_flagged(runs):
    rows = _rows(read_weights(runs["overwritten"]))
    cov = rows["cov"]
    assert cov.value == 0.0 and cov.primary
    assert [(c.value, c.step, c.recorded) for c in cov.changes] == [(0.0, 1, False)]
    assert cov.source_is_stale  # the run still says "default" wrote it
    assert [(c.value, c.recorded) for c in rows["peak"].changes] == [(0.7, True)]  # the schedule is intact


def test_the_command_prints_a_table_and_json(runs):
    runner = CliRunner()
    table = runner.invoke(weights_command, [str(runs["overwritten"])])
    assert table.exit_code == 0, table.output
    for text in ("cov", "yes", "0.7@2 (schedule:phase 0@epoch 1)", "0@1", "UNRECORDED"):
        assert text in table.output, text
    as_json = runner.invoke(weights_command, [str(runs["scheduled"]), "--json"])
    assert as_json.exit_code == 0, as_json.output
    blob = json.loads(as_json.output)
    assert blob["primary"] == "cov"
    peak = next(t for t in blob["terms"] if t["term"] == "peak")
    assert peak["value"] == 0.7 and peak["changes"][0]["step"] == SCENES // BATCH


def test_a_run_without_metrics_shows_the_config(runs, tmp_path):
    (tmp_path / "config.json").write_text((runs["scheduled"] / "config.json").read_text())
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step", "step": 0, "weights": {"cov"')  # torn, skipped
    rows = _rows(read_weights(tmp_path))
    assert rows["subspace"].value == 0.4 and rows["peak"].value == 0.7  # the last recorded change
    assert weights_table(tmp_path).row_count == len(rows)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "has no config.json"),
    (lambda p: (p / "config.json").write_text("{not json") and p, "is not valid JSON"),
])
def test_unreadable_run_dirs_are_a_usage_error(tmp_path, make, message):
    run_dir = make(tmp_path)
    with pytest.raises(WeightsViewError, match=message):
        read_weights(run_dir)
    result = CliRunner().invoke(weights_command, [str(run_dir)])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output

"""Run directories from elsewhere and destinations that fail: ``ris-model`` never writes
outside the run dir, never prints a traceback, and says in one sentence what is wrong.

Each test here failed before the rule it checks was in place (docs/run-dir.md, "Run
directories from elsewhere").
"""

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_cases import QUIET, TINY, invoke, trained_run
from cli_cases import one_sentence as assert_one_sentence
from click.testing import CliRunner

from ris_model.config import load_config
from ris_model.training.callbacks import Callback
from ris_model.training.rundir import RunDir
from ris_model.training.train import Trainer
from tests.hostile import refusal_of_fifo


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-epoch run, copied by each test that changes it."""
    return trained_run(tmp_path_factory, "hostile")


@pytest.fixture
def copy(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target, symlinks=True)
    return target


def lines(run_dir):
    return [json.loads(raw) for raw in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- writes stay inside
@pytest.mark.parametrize("planted", ["checkpoints/last.pt.tmp", "checkpoints/best.pt.tmp", "config.json.tmp"])
def test_resume_never_writes_through_a_planted_temporary_link(copy, tmp_path, planted):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, copy / planted)
    result = invoke("train", "--run-dir", copy, "--resume", "--epochs", "2", *QUIET)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"
    assert (copy / planted).is_symlink()  # left alone, not followed
    assert not list(copy.rglob(".*.tmp"))  # our own temporaries were renamed into place


@pytest.mark.parametrize("name", ["metrics.jsonl", "health.jsonl"])
def test_a_symlinked_log_is_refused_and_its_target_untouched(copy, tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (copy / name).unlink(missing_ok=True)
    os.symlink(victim, copy / name)
    with_health = [a for a in QUIET if a != "--no-health"]
    error = assert_one_sentence(invoke("train", "--run-dir", copy, "--resume", "--epochs", "2", *with_health),
                                "symbolic link", name)
    assert "precious" == victim.read_text(), error


def test_a_symlinked_checkpoints_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(elsewhere, run_dir / "checkpoints")
    assert_one_sentence(invoke("train", *TINY, "--epochs", "1", *QUIET, "--run-dir", run_dir),
                        "checkpoints", "symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_a_fifo_in_place_of_metrics_is_refused_without_blocking(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fifo = run_dir / "metrics.jsonl"
    os.mkfifo(fifo)
    outcome = refusal_of_fifo(fifo, lambda: RunDir(run_dir).close())
    assert len(outcome) == 1 and "not a regular file" in outcome[0], outcome


# ---------------------------------------------------------------- corrupted and foreign files
class Foreign:
    """Not a tensor: a checkpoint holding it must be refused by the weights-only loader."""


def _corrupt(path: Path, how: str, tmp_path: Path) -> None:
    good = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "random":
        path.write_bytes(os.urandom(4096))
    elif how == "pickle payload":
        torch.save({"model": Foreign()}, path)
    elif how == "plain pickle":
        path.write_bytes(pickle.dumps({"model": 1}))
    elif how == "not a dict":
        torch.save([torch.zeros(3)], path)
    elif how == "missing keys":
        torch.save({"config_hash": "x"}, path)
    elif how == "wrong shapes":
        state = torch.load(path, weights_only=True)
        state["model"] = {k: torch.zeros(2, 2) for k in state["model"]}
        if state.get("ema") is not None:
            state["ema"] = state["model"]
        torch.save(state, path)
    elif how == "wrong types":
        state = torch.load(path, weights_only=True)
        state["trainer"] = {"epoch": "zero"}
        state["loss_weights"] = [1, 2]
        torch.save(state, path)
    else:
        raise AssertionError(how)


CHECKPOINT_DAMAGE = ["empty", "truncated", "random", "pickle payload", "plain pickle", "not a dict",
                     "missing keys", "wrong shapes"]


@pytest.mark.parametrize("how", CHECKPOINT_DAMAGE)
def test_eval_of_a_damaged_checkpoint_is_one_sentence(copy, tmp_path, how):
    _corrupt(copy / "checkpoints" / "best.pt", how, tmp_path)
    error = assert_one_sentence(invoke("eval", copy, "--n", "2", "--refine", "none"), "best.pt")
    assert "weights_only=False" not in error


@pytest.mark.parametrize("how", CHECKPOINT_DAMAGE + ["wrong types"])
def test_resume_from_a_damaged_checkpoint_is_one_sentence(copy, tmp_path, how):
    _corrupt(copy / "checkpoints" / "last.pt", how, tmp_path)
    error = assert_one_sentence(invoke("train", "--run-dir", copy, "--resume", "--epochs", "2", *QUIET),
                                "last.pt")
    assert "weights_only=False" not in error


CONFIG_DAMAGE = {
    "empty": b"",
    "invalid JSON": b'{"config": {',
    "non-UTF-8": b'{"config": "\xff\xfe"}',
    "a list": b"[1, 2]",
    "no config table": b'{"schema": 1}',
    "config a list": b'{"config": [1]}',
    "section a number": b'{"config": {"train": 3}}',
    "value of another type": b'{"config": {"train": {"lr": "fast"}}}',
    "sources a list": b'{"config": {}, "sources": [1]}',
    "deep nesting": b'{"config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("how", sorted(CONFIG_DAMAGE))
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_damaged_config_json_is_one_sentence(copy, how, command):
    (copy / "config.json").write_bytes(CONFIG_DAMAGE[how])
    if command == "eval":
        result = invoke("eval", copy, "--n", "2", "--refine", "none")
    else:
        result = invoke("train", "--run-dir", copy, "--resume", "--epochs", "2", *QUIET)
    assert_one_sentence(result, "config.json")


# ---------------------------------------------------------------- unwritable and full destinations
@pytest.fixture
def read_only(monkeypatch):
    """Folders under the given root refuse new files, as on a read-only mount (the tests
    run as root on CI, where chmod would not stop a write)."""
    roots = []
    real_open, real_makedirs = os.open, os.makedirs

    def refused(path):
        return any(os.path.abspath(os.fspath(path)).startswith(str(r)) for r in roots)

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and refused(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_makedirs(path, *args, **kwargs):
        if refused(path) and not os.path.isdir(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "makedirs", fake_makedirs)
    return roots


def test_a_read_only_run_dir_fails_before_training(tmp_path, read_only):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    read_only.append(run_dir)
    started = time.perf_counter()
    assert_one_sentence(invoke("train", *TINY, "--epochs", "1", *QUIET, "--run-dir", run_dir),
                        str(run_dir), "Read-only file system")
    assert list(run_dir.iterdir()) == []
    assert time.perf_counter() - started < 30


def test_a_read_only_dataset_dir_is_one_sentence(tmp_path, read_only):
    out = tmp_path / "data"
    out.mkdir()
    read_only.append(out)
    assert_one_sentence(invoke("simulate", "--preset", "tiny", "--n", "2", "--out", out), "Read-only file system")


def test_a_read_only_study_dir_is_one_sentence(tmp_path, read_only):
    study = tmp_path / "study"
    study.mkdir()
    read_only.append(study)
    assert_one_sentence(invoke("hpo", "--preset", "tiny", "--study-dir", study, "--gate", "skip", "--trials", "1"),
                        "Read-only file system")


def test_a_read_only_report_dir_fails_before_the_report_is_built(tmp_path, read_only, monkeypatch):
    from healthcheck import report
    from healthcheck.cli import cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "step", "step": 0, "loss": 1.0}) + "\n")
    built = []
    monkeypatch.setattr(report, "collect", lambda *a, **k: built.append(1))
    read_only.append(run_dir)
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert_one_sentence(result, "Read-only file system")
    assert built == []


def test_a_full_disk_stops_the_run_with_one_sentence_a_stop_line_and_no_stray_temporary(copy, monkeypatch):
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        if hasattr(f, "write"):  # a checkpoint going to its temporary: half of it, then the disk is full
            f.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    before = (copy / "checkpoints" / "last.pt").read_bytes()
    result = invoke("train", "--run-dir", copy, "--resume", "--epochs", "2", *QUIET)
    assert_one_sentence(result, "checkpoints", "disk is full")
    assert not [p.name for p in copy.rglob("*") if p.name.endswith(".tmp")]
    assert (copy / "checkpoints" / "last.pt").read_bytes() == before  # the previous one intact
    stop = lines(copy)[-1]
    assert stop["kind"] == "stop" and stop["stop_reason"] == "write_failed"


def test_a_failing_write_in_a_callback_stops_the_run_with_a_checkpoint_and_a_stop_line(tmp_path, cfg):
    class HealthLogOnAFullDisk(Callback):
        def on_after_optimizer_step(self, trainer, metrics):
            if metrics["step"] == 1:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "health.jsonl"))

    trainer = Trainer(cfg, tmp_path / "run", device="cpu", callbacks=[HealthLogOnAFullDisk()])
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    stop = lines(tmp_path / "run")[-1]
    assert stop["kind"] == "stop" and stop["stop_reason"] == "write_failed" and stop["step"] == 2
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainer"]["batches_seen"] == 2


# ---------------------------------------------------------------- resume bookkeeping
@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", overrides=["train.train_scenes=48", "train.val_scenes=8", "train.batch_size=16",
                                          "model.width=16", "model.depth=1", "train.epochs=2",
                                          "train.warmup_steps=2"])


def timeline(run_dir):
    """(step, loss) of every applied step, on the resumed timeline."""
    from healthcheck.record import resumed_timeline

    return [(l["step"], l["loss"]) for l in resumed_timeline(lines(run_dir))
            if l["kind"] == "step" and not l["skipped"]]


class SignalAt(Callback):
    """Sends the process a signal between backward and the optimizer step, as a Ctrl-C
    or a scheduler's SIGTERM lands mid-step."""

    def __init__(self, step, sig):
        self.step, self.sig = step, sig

    def on_after_backward(self, trainer, metrics):
        if metrics["step"] == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_step_stops_cleanly_and_the_resumed_run_keeps_exact_step_numbers(cfg, tmp_path, sig):
    full = tmp_path / "full"
    Trainer(cfg, full, device="cpu").fit()
    part = tmp_path / "part"
    result = Trainer(cfg, part, device="cpu", callbacks=[SignalAt(4, sig)]).fit()
    assert result.interrupted and result.batches_seen == 4
    assert lines(part)[-1]["kind"] == "stop" and signal.Signals(sig).name in lines(part)[-1]["reason"]
    resumed = Trainer(cfg, part, device="cpu")
    resumed.resume_from(part / "checkpoints" / "last.pt")
    resumed.fit()
    assert timeline(part) == timeline(full)


class KeepCheckpointAt(Callback):
    """Copies checkpoints/last.pt as it is when ``step`` starts: what a kill -9 during that
    step leaves behind."""

    def __init__(self, step, to):
        self.step, self.to = step, to

    def on_batch_start(self, trainer, batch_index):
        if trainer.state.batches_seen == self.step:
            shutil.copy(trainer.run.checkpoints / "last.pt", self.to)


def test_a_resume_is_marked_and_the_replayed_steps_are_superseded(cfg, tmp_path):
    full = tmp_path / "full"
    Trainer(cfg, full, device="cpu").fit()
    part = tmp_path / "part"
    Trainer(cfg, part, device="cpu", callbacks=[KeepCheckpointAt(4, tmp_path / "at4.pt")]).fit()
    # kill -9 during step 4: the file ends after it, the checkpoint is the one of epoch 1
    kept = [l for l in lines(part) if l["step"] <= 4 and l["kind"] == "step" or l["step"] < 3]
    (part / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in kept))
    shutil.copy(tmp_path / "at4.pt", part / "checkpoints" / "last.pt")
    resumed = Trainer(cfg, part, device="cpu")
    resumed.resume_from(part / "checkpoints" / "last.pt")
    resumed.fit()
    marks = [l for l in lines(part) if l["kind"] == "resume"]
    assert len(marks) == 1 and (marks[0]["step"], marks[0]["epoch"]) == (3, 1)
    assert [l["step"] for l in lines(part) if l["kind"] == "step"] == [0, 1, 2, 3, 4, 3, 4, 5]  # logged twice
    assert timeline(part) == timeline(full)  # read as one run


def test_a_torn_last_line_is_ended_before_the_resumed_run_appends(copy):
    with open(copy / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"schema":1,"kind":"step","step":9')  # the process died mid-line
    result = invoke("train", "--run-dir", copy, "--resume", "--epochs", "2", *QUIET)
    assert result.exit_code == 0, result.output
    raw = (copy / "metrics.jsonl").read_text().splitlines()
    parsed = []
    for text in raw:
        try:
            parsed.append(json.loads(text))
        except ValueError:
            assert text == '{"schema":1,"kind":"step","step":9'
    assert len(parsed) == len(raw) - 1
    assert parsed[-1]["kind"] == "eval" and any(p["kind"] == "resume" for p in parsed)


def test_sigterm_to_the_train_command_stops_it_like_ctrl_c(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ris_model.cli", "train", "--preset", "tiny", "--set", "train.train_scenes=4096",
            "--set", "train.batch_size=8", "--set", "model.width=16", "--set", "model.depth=1",
            "--epochs", "50", *QUIET, "--run-dir", str(run_dir)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            path = run_dir / "metrics.jsonl"
            if path.exists() and path.read_bytes().count(b'"kind":"step"') >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("training did not start within 120 s")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    stop = lines(run_dir)[-1]
    assert stop["kind"] == "stop" and stop["stop_reason"] == "interrupted" and "SIGTERM" in stop["reason"]
    assert (run_dir / "checkpoints" / "last.pt").is_file()

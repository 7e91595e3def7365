import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from click.testing import CliRunner

from ris_model.cli import main
from ris_model.config import load_config
from ris_model.hpo import StudySettings, gate_status, run_study, search_space, trial_config
from ris_model.training.callbacks import Callback

FAST = ["train.train_scenes=96", "train.val_scenes=32", "train.batch_size=32", "model.width=16", "model.depth=1"]


def fast_cfg(*extra):
    return load_config("tiny", overrides=FAST + list(extra))


def write_gate(study_dir, cfg, passed=True):
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "gate.json").write_text(json.dumps(
        {"passed": passed, "config_hash": cfg.hash, "checks": [{"name": "loss_self_test", "passed": passed}]}))


def test_search_space_leaves_out_the_primary_and_scheduled_terms():
    cfg = load_config("tiny", overrides=['loss.schedule=[{"start_epoch": 2, "weights": {"peak": 0.5}}]'])
    space = search_space(cfg)
    assert "weight_factor.cov" not in space and "weight_factor.peak" not in space
    assert {"train.lr", "train.weight_decay", "model.width", "weight_factor.subspace"} <= space.keys()
    assert space["model.width"].high == cfg.model.width  # never above the parameter budget


def test_trial_config_multiplies_weights_and_records_the_trial():
    cfg = load_config("tiny")
    t = trial_config(cfg, {"train.lr": 1e-3, "weight_factor.subspace": 2.0}, trial=4)
    assert t.train.lr == 1e-3 and t.source_of("train.lr") == "hpo:trial 4"
    assert t.loss.weights.subspace == pytest.approx(2.0 * cfg.loss.weights.subspace)
    assert t.source_of("loss.weights.subspace").startswith("hpo:trial 4")


def test_gate_status_checks_presence_hash_and_verdict(tmp_path):
    cfg = fast_cfg()
    assert not gate_status(tmp_path, cfg)[0]
    write_gate(tmp_path, load_config("tiny"))
    ok, why = gate_status(tmp_path, cfg)
    assert not ok and "not this one" in why
    write_gate(tmp_path, cfg, passed=False)
    ok, why = gate_status(tmp_path, cfg)
    assert not ok and "loss_self_test" in why
    write_gate(tmp_path, cfg)
    assert gate_status(tmp_path, cfg)[0]


def test_cli_refuses_without_a_gate(tmp_path):
    result = CliRunner().invoke(main, ["hpo", "--preset", "tiny", "--study-dir", str(tmp_path), "--trials", "1"])
    assert result.exit_code == 2 and "refusing to start HPO" in result.output and "gate.json" in result.output


class DropPrimaryOnTrial(Callback):
    def on_batch_start(self, trainer, batch_index):
        object.__setattr__(trainer.loss_fn, "weights", dataclasses.replace(trainer.loss_fn.weights, cov=0.0))


def test_study_runs_and_prunes_an_unhealthy_trial(tmp_path):
    cfg = fast_cfg()
    settings = StudySettings(study_dir=tmp_path, study_name="t", storage=None, trials=3, epochs=2, device="cpu",
                             extra_callbacks=lambda trial: [DropPrimaryOnTrial()] if trial.number == 1 else [])
    study = run_study(cfg, settings, log=lambda m: None)
    states = {t.number: t.state for t in study.trials}
    assert states[0] == states[2] == optuna.trial.TrialState.COMPLETE
    assert states[1] == optuna.trial.TrialState.PRUNED
    pruned = study.trials[1]
    assert "weights.primary_zero" in pruned.user_attrs["prune_reason"]
    assert pruned.user_attrs["health_prune_code"] == "weights.primary_zero"
    assert (tmp_path / "study.db").is_file() and (tmp_path / "trial-0000" / "metrics.jsonl").is_file()
    assert all(t.user_attrs["health"].get("error", 0) == 0 for t in study.trials if t.number != 1)


def _worker(study_dir, trials, name="shared", epochs=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RIS_MODEL_WANDB": "off", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "ris_model.cli", "hpo", "--preset", "tiny", "--study-dir", str(study_dir),
            "--study", name, "--trials", str(trials), "--epochs", str(epochs), "--gate", "skip", "--device", "cpu"]
    for item in FAST:
        args += ["--set", item]
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _done(study_dir, name="shared"):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def _study(study_dir, name="shared"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def test_two_workers_share_one_sqlite_study(tmp_path):
    # enough trials that the study outlasts the second worker's start-up (imports take seconds)
    workers = [_worker(tmp_path, 10, epochs=2) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    done = _done(tmp_path)
    assert len(done) == 10  # --trials is the study's total, not each worker's
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes ran trials
    assert len({tuple(sorted(t.params.items())) for t in done}) == 10  # the same --seed, no shared draws
    assert len({t.user_attrs["sampler_seed"] for t in done}) == 10


def _running_trial_of(study_dir, pid, timeout=120):
    """The number of a trial that worker ``pid`` is running, once it is mid-trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in _study(study_dir).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{pid}"):
                return t.number
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} was never seen mid-trial")


def test_a_killed_study_resumes(tmp_path):
    first = _worker(tmp_path, 8, epochs=3)  # long enough that a kill lands mid-study
    # Wait for the worker to report two trials on its own output (the first is stored by
    # the time the second ends): opening the study from here while the worker is still
    # creating it races it for the schema.
    finished = threading.Event()

    def watch_output():
        reported = 0
        for line in first.stdout:
            reported += line.startswith("trial ")
            if reported >= 2:
                finished.set()

    threading.Thread(target=watch_output, daemon=True).start()
    assert finished.wait(timeout=240), "the first worker did not finish two trials"
    killed = _running_trial_of(tmp_path, first.pid)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {t.number: t.value for t in _done(tmp_path)}
    assert 1 <= len(before) < 8
    second = _worker(tmp_path, len(before) + 2)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out
    after = {t.number: t.value for t in _done(tmp_path)}
    assert len(after) == len(before) + 2
    assert all(after[n] == v for n, v in before.items())  # finished trials are kept, not redone
    study = _study(tmp_path)
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed] == "FAIL" and "RUNNING" not in states.values()  # nor in the final table
    assert f"{killed} │ FAIL" in out
    drawn = [tuple(sorted(t.params.items())) for t in study.trials if t.params]
    assert len(set(drawn)) == len(drawn)  # the restarted worker did not replay its first draws


def test_gate_auto_runs_the_gate_then_the_study(tmp_path):
    args = ["hpo", "--preset", "tiny", "--study-dir", str(tmp_path), "--trials", "1", "--epochs", "1",
            "--gate", "auto", "--device", "cpu"]
    for item in FAST:
        args += ["--set", item]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["passed"] and gate["config_hash"] == fast_cfg().hash
    assert len(_done(tmp_path, "ris-model")) == 1

"""HPO on a real PostgreSQL server: the multi-machine set-up, one database and N workers.

The server comes from ``ci/postgres.sh`` (``.ci/run`` starts one and exports
RIS_TEST_POSTGRES_URL); every test gets a database of its own on it.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import optuna
import pytest
from click.testing import CliRunner

from ris_model.cli import main
from ris_model.config import load_config
from ris_model.hpo import StudySettings, run_study

FAST = ["train.train_scenes=96", "train.val_scenes=32", "train.batch_size=32", "model.width=16", "model.depth=1"]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture
def postgres_url():
    """A fresh, empty database on the test server, dropped afterwards."""
    server = os.environ.get("RIS_TEST_POSTGRES_URL")
    if not server:
        pytest.skip('RIS_TEST_POSTGRES_URL is not set: start a server with eval "$(bash ci/postgres.sh start)" '
                    "(.ci/run does)")
    psycopg = pytest.importorskip("psycopg", reason="the postgres driver: pip install -e '.[postgres]'")
    from sqlalchemy.engine import make_url

    name = f"hpo_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_url(server).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_study_runs_on_postgresql(tmp_path, postgres_url):
    cfg = load_config("tiny", overrides=FAST)
    settings = StudySettings(study_dir=tmp_path, study_name="one", storage=postgres_url, trials=2, epochs=1,
                             device="cpu")
    study = run_study(cfg, settings, log=lambda m: None)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert len({t.user_attrs["sampler_seed"] for t in study.trials}) == 2
    assert not (tmp_path / "study.db").exists()  # the study lives in the database, not in SQLite


def test_a_missing_database_is_one_sentence(tmp_path, postgres_url):
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url).set(database="no_such_database").render_as_string(hide_password=False)
    result = CliRunner().invoke(main, ["hpo", "--preset", "tiny", "--study-dir", str(tmp_path), "--trials", "1",
                                       "--gate", "skip", "--device", "cpu", "--storage", url])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and 'database "no_such_database" does not exist' in errors[0], result.output


class Worker:
    """One ``ris-model hpo`` process, as on a machine of its own (its own study dir)."""

    def __init__(self, study_dir, url, study, trials, epochs):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RIS_MODEL_WANDB": "off", "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, "-m", "ris_model.cli", "hpo", "--preset", "tiny", "--study-dir", str(study_dir),
                "--study", study, "--storage", url, "--trials", str(trials), "--epochs", str(epochs),
                "--gate", "skip", "--device", "cpu"]
        for item in FAST:
            args += ["--set", item]
        self.study_dir = study_dir
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.joined = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("study "):
                self.joined.set()

    def finish(self, timeout):
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return "".join(self.lines)


def _wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_three_workers_share_a_study_and_survive_a_killed_one(tmp_path, postgres_url):
    trials, name = 9, "shared"
    workers = [Worker(tmp_path / f"machine-{i}", postgres_url, name, trials, epochs=4) for i in range(3)]
    victim, survivors = workers[0], workers[1:]
    try:
        for w in workers:
            assert w.joined.wait(timeout=180), "".join(w.lines)
        study = optuna.load_study(study_name=name, storage=postgres_url)

        def victim_mid_trial():  # an epoch into a trial, after one finished trial of its own
            mine = [t for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get("worker", "").endswith(f":{victim.proc.pid}")]
            done = [t for t in mine if t.state in FINISHED]
            running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values]
            return running[0].number if done and running else None

        killed = _wait_until(victim_mid_trial, 180, "the victim to be mid-trial")
        victim.proc.send_signal(signal.SIGKILL)
        victim.finish(timeout=30)
        outputs = [w.finish(timeout=400) for w in survivors]
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
    assert all(w.proc.returncode == 0 for w in survivors), outputs

    all_trials = study.get_trials(deepcopy=False)
    finished = [t for t in all_trials if t.state in FINISHED]
    by_number = {t.number: t for t in all_trials}
    # every requested trial finished once: exactly --trials of them, each in one run dir
    assert len(finished) == trials, [(t.number, t.state.name, t.user_attrs.get("worker")) for t in all_trials]
    assert by_number[killed].state == optuna.trial.TrialState.FAIL
    assert by_number[killed].user_attrs["worker"].endswith(f":{victim.proc.pid}")
    assert all(t.state in FINISHED or t.state == optuna.trial.TrialState.FAIL for t in all_trials)
    failed = [t for t in all_trials if t.state == optuna.trial.TrialState.FAIL and t.number != killed]
    assert all("surplus" in t.user_attrs and not t.params for t in failed)  # a lost race for the last place only
    run_dirs = [d.name for w in workers for d in w.study_dir.glob("trial-*")]
    assert len(run_dirs) == len(set(run_dirs)) == trials + 1  # no trial ran twice, the killed one ran once
    for t in finished:
        assert (tmp_path / t.user_attrs["run_dir"] / "metrics.jsonl").is_file()
    # no two trials drew the same point: each has its own sampler stream
    drawn = [tuple(sorted(t.params.items())) for t in all_trials if t.params]
    assert len(drawn) == len(set(drawn)) == trials + 1
    assert len({t.user_attrs["sampler_seed"] for t in all_trials if t.params}) == trials + 1
    # the survivors both worked, and their final tables show the killed trial failed, none running
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in finished}
    assert pids >= {str(w.proc.pid) for w in survivors}
    for out in outputs:
        assert f"{killed} │ FAIL" in out and "RUNNING" not in out

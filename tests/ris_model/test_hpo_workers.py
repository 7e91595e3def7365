"""HPO workers: each trial draws from its own seeded stream, and a bad --storage is one sentence."""

import dataclasses
import importlib.util
import socket
import threading

import optuna
import pytest
from click.testing import CliRunner

from ris_model import hpo
from ris_model.cli import main
from ris_model.config import load_config
from ris_model.hpo import StudySettings, open_study, run_study, search_space, suggest, trials_ahead
from ris_model.hpo_sampler import trial_seed

SPACE = search_space(load_config("tiny"))
# the draws here come from study.ask without Study.optimize's heartbeat thread
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def settings(study_dir, seed=0, name="s"):
    study_dir.mkdir(parents=True, exist_ok=True)
    return StudySettings(study_dir=study_dir, study_name=name, storage=None, trials=4, epochs=1, seed=seed)


def draw(study, value=None):
    """Ask one trial, draw the whole space, tell a value (made up from the draw: no training)."""
    trial = study.ask()
    params = {name: suggest(trial, name, dist) for name, dist in SPACE.items()}
    study.tell(trial, params["train.lr"] * 1e3 if value is None else value)
    return tuple(sorted(params.items()))


def test_trial_seeds_differ_between_trials_and_take_any_base_seed():
    seeds = {trial_seed(0, n) for n in range(1000)}
    assert len(seeds) == 1000
    assert trial_seed(2**70, 3) == trial_seed(2**70, 3) != trial_seed(2**70 + 1, 3)
    assert all(0 <= s < 2**32 for s in (trial_seed(2**63, 0), trial_seed(0, 2**40)))


def test_a_restarted_worker_does_not_replay_its_first_draws(tmp_path):
    first_life = [draw(open_study(settings(tmp_path))), draw(open_study(settings(tmp_path)))]  # two lives, one --seed
    study = open_study(settings(tmp_path))
    again = [draw(study) for _ in range(2)]
    assert len(set(first_life + again)) == 4


def test_workers_with_the_same_seed_draw_different_points(tmp_path):
    a, b = open_study(settings(tmp_path)), open_study(settings(tmp_path))
    drawn = [draw(worker) for _ in range(3) for worker in (a, b)]
    assert len(set(drawn)) == len(drawn)
    trials = a.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(6))


def test_a_one_worker_study_is_reproducible_and_the_seed_matters(tmp_path):
    def study_draws(name, seed):
        study = open_study(settings(tmp_path / name, seed=seed))
        return [draw(study) for _ in range(4)]

    assert study_draws("a", 0) == study_draws("b", 0)
    assert study_draws("c", 1) != study_draws("a2", 0)


def test_trials_ahead_counts_finished_and_running_below_a_number():
    study = optuna.create_study()
    trials = [study.ask() for _ in range(4)]
    study.tell(trials[0], 1.0)
    study.tell(trials[1], state=optuna.trial.TrialState.FAIL)
    assert trials_ahead(study, 3) == 2  # trial 0 finished, trial 2 running; trial 1 failed
    assert trials_ahead(study, 0) == 0


def test_a_trial_that_never_heartbeats_is_failed_not_waited_for(tmp_path, monkeypatch):
    # a worker killed between creating its trial and its first heartbeat leaves a trial
    # that optuna's heartbeat never fails; a worker waiting for it would wait forever
    monkeypatch.setattr(hpo, "ORPHAN_S", 0)
    one = dataclasses.replace(settings(tmp_path), trials=1, device="cpu")
    orphan = open_study(one).ask()
    cfg = load_config("tiny", overrides=["train.train_scenes=64", "train.val_scenes=32", "train.batch_size=32",
                                         "model.width=16", "model.depth=1"])
    out = {}
    worker = threading.Thread(target=lambda: out.update(study=run_study(cfg, one, log=lambda m: None)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert "study" in out, "the worker waited for a trial that will never finish"
    states = [t.state.name for t in out["study"].trials]
    assert states[orphan.number] == "FAIL" and states.count("COMPLETE") == 1 and "RUNNING" not in states


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_STORAGE = [
    ("foo://x", "knows no database called 'foo'"),
    ("not a url", "is not a database URL"),
    ("postgresql+nosuchdriver://u@localhost/db", "postgresql+nosuchdriver"),
    ("sqlite:////nonexistent-dir/x/study.db", "unable to open database file"),
]
if importlib.util.find_spec("MySQLdb") is None:
    BAD_STORAGE.append(("mysql://u:secret@localhost/db", "mysql driver mysqldb, which is not installed"))


@pytest.mark.parametrize(("url", "words"), BAD_STORAGE + [("refused", "Connection refused")])
def test_a_bad_storage_url_is_one_sentence_and_exit_2(tmp_path, url, words):
    if url == "refused":  # nothing listens there: the server is unreachable
        url = f"postgresql://user:secret@127.0.0.1:{_free_port()}/db"
    result = CliRunner().invoke(main, ["hpo", "--preset", "tiny", "--study-dir", str(tmp_path), "--trials", "1",
                                       "--gate", "skip", "--device", "cpu", "--storage", url])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (ImportError, AttributeError))
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0], result.output
    assert "secret" not in result.output  # the password is hidden

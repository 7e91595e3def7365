"""``ris-model hpo``: an optuna study over the trainer, gated on health and watched by it.

- Refuses to start unless a passing ``gate.json`` exists for the same config hash
  (``--gate auto`` runs the gate first; ``--gate skip`` is for people who know why).
- TPE over learning rate, weight decay, model width and the auxiliary loss weights.
  Loss weights follow the rule of ``ris_model.training.weights``: a trial MULTIPLIES each base
  weight by a factor; the primary weight is not searched (it is the reference scale);
  terms that a schedule sets are left out of the search.
- ``trial.report`` after every epoch with a median pruner (the origin pipeline never
  reported, so its pruner never fired), and every trial runs the health monitor in the
  ``hpo`` context: an error-level event prunes the trial and the reason is stored on it.
- Storage defaults to SQLite under the study dir; pass a database URL
  (``postgresql://…``) to let workers on several machines share one study. ``--trials`` is
  a study-wide total: a worker starts a trial only while finished plus running trials fall
  short of it, and waits while the rest run elsewhere; of two workers racing for the last
  place, the one whose trial the storage numbered later stands down. Trials of a killed
  worker are failed by optuna's heartbeat and redone; a worker ends only when no trial is
  left running, so its final table never shows a dead trial as RUNNING.
- The sampler's random stream restarts at every trial from (``--seed``, trial number):
  trial numbers are unique in a study, so concurrent workers with the same ``--seed`` and
  a restarted worker never replay each other's draws, and a one-worker study is
  reproducible (``ris_model.hpo_sampler``). The seed is stored on the trial (``sampler_seed``).
- A ``--storage`` that cannot be used is one sentence (``ris_model.hpo_storage``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ris_model.config import Config, ConfigError, LossWeights
from ris_model.training.callbacks import Callback
from ris_model.training.stop import StopReason
from ris_model.training.weights import apply_hpo_factors

GATE_FILE = "gate.json"
GATE_MODES = ("require", "auto", "skip")


def search_space(cfg: Config) -> dict[str, Any]:
    """The optuna distributions of a study on ``cfg``, keyed by what they set."""
    from optuna.distributions import FloatDistribution, IntDistribution

    h = cfg.hpo
    width = cfg.model.width
    space: dict[str, Any] = {
        "train.lr": FloatDistribution(h.lr_min, h.lr_max, log=True),
        "train.weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
        # never wider than the preset: the preset width sits at its parameter budget
        "model.width": IntDistribution(max(16, width // 2), width, step=16 if width >= 32 else 1),
    }
    scheduled = {t for phase in cfg.loss.schedule for t in phase.weights}
    for term in LossWeights.terms():
        if term == LossWeights.PRIMARY or term in scheduled:
            continue
        space[f"weight_factor.{term}"] = FloatDistribution(h.weight_scale_min, h.weight_scale_max, log=True)
    return space


def trial_config(cfg: Config, params: dict[str, Any], trial: int | str) -> Config:
    """The config of one trial: plain values replaced, loss weights multiplied."""
    plain = {k: v for k, v in params.items() if not k.startswith("weight_factor.")}
    factors = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("weight_factor.")}
    out = cfg.with_values(plain, f"hpo:trial {trial}") if plain else cfg
    return apply_hpo_factors(out, factors, trial) if factors else out


def suggest(trial: Any, name: str, dist: Any) -> Any:
    """Draw one parameter through optuna's public suggest API."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise TypeError(f"unsupported distribution for {name!r}: {dist!r}")


# --------------------------------------------------------------------------- gate
def gate_status(study_dir: Path, cfg: Config) -> tuple[bool, str]:
    """(ok, sentence) for the gate.json in ``study_dir`` against this config."""
    path = study_dir / GATE_FILE
    if not path.is_file():
        return False, (f"no {GATE_FILE} in {str(study_dir)!r}: run `healthcheck gate --run-dir {study_dir}` "
                       f"with the same config first, or pass --gate auto")
    try:
        verdict = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False, f"{path} is not valid JSON; run the gate again"
    if verdict.get("config_hash") != cfg.hash:
        return False, (f"{path} was made for config {verdict.get('config_hash')}, not this one ({cfg.hash}); "
                       f"run the gate again on this config")
    if not verdict.get("passed"):
        failed = [c.get("name") for c in verdict.get("checks", []) if c.get("passed") is False]
        return (
            False,
            f"the gate failed for this config ({', '.join(map(str, failed)) or 'see gate.json'}); fix it first",
        )
    return True, f"gate passed for config {cfg.hash}"


def run_gate_plugin(cfg: Config, study_dir: Path, device: str) -> dict[str, Any]:
    """Run the gate registered in the ``ris_model.gates`` entry-point group."""
    found = [ep for ep in entry_points(group="ris_model.gates")]
    if not found:
        raise ConfigError("--gate auto needs a gate plugin (install the healthcheck package), or run it by hand")
    return found[0].load()(cfg, study_dir, device)


# ------------------------------------------------------------------------- trials
class ReportToTrial(Callback):
    """Reports the objective after every epoch and stops a trial the pruner rejects.

    The objective is the validation value of the primary term, UNWEIGHTED: the weighted
    total changes scale with the very loss weights the study searches, so ranking trials
    on it would compare incomparable numbers (docs/failure-catalogue.md row 11).
    """

    def __init__(self, trial: Any, primary: str = LossWeights.PRIMARY) -> None:
        self.trial = trial
        self.primary = primary
        self.best = math.inf

    def on_validation_end(self, trainer, metrics) -> None:
        value = metrics["terms"][self.primary]
        value = value if math.isfinite(value) else math.inf
        self.best = min(self.best, value)
        self.trial.report(value, metrics["epoch"])
        if self.trial.should_prune():
            trainer.request_stop(
                f"pruned by the median pruner after epoch {metrics['epoch']} (val {self.primary} {value:.4g})",
                StopReason.PRUNED,
            )


def health_counts(run_dir: Path) -> dict[str, int]:
    """Events per severity in a trial's health.jsonl (torn or garbage lines skipped)."""
    counts: dict[str, int] = {}
    path = run_dir / "health.jsonl"
    if not path.is_file():
        return counts
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("code") == "monitor.summary":
            continue
        counts[event.get("severity", "?")] = counts.get(event.get("severity", "?"), 0) + int(event.get("count", 1))
    return counts


@dataclass
class StudySettings:
    study_dir: Path
    study_name: str
    storage: str | None
    trials: int
    epochs: int
    device: str = "auto"
    seed: int = 0
    health: bool = True
    extra_callbacks: Callable[[Any], list[Callback]] | None = None  # trial -> callbacks (tests, faults)


def storage_url(settings: StudySettings) -> str:
    return settings.storage or f"sqlite:///{(settings.study_dir / 'study.db').resolve()}"


def open_study(settings: StudySettings, attempts: int = 5, patience_s: float = 15.0) -> Any:
    """Create or join the study. Workers started together race to create the schema and the
    study row; the loser sees a locked database or a duplicate row for a moment, and simply
    tries again (within ``patience_s``: a server that cannot be reached is not waited for long)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    from ris_model.hpo_sampler import TrialSeededSampler
    from ris_model.hpo_storage import StorageError, driver_words, make_storage, shown_url

    url = storage_url(settings)
    start = time.monotonic()
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=settings.study_name,
                storage=make_storage(url),
                direction="minimize",
                sampler=TrialSeededSampler(settings.seed),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
                load_if_exists=True,
            )
        except (IntegrityError, OperationalError) as exc:
            if attempt == attempts - 1 or time.monotonic() - start > patience_s:
                raise StorageError(f"cannot open the study storage {shown_url(url)!r}: {driver_words(exc)}") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


ORPHAN_S = 60  # a running trial that never named its worker this long after it started is dead


def fail_stale_trials(study: Any) -> None:
    """Fail the running trials whose worker is gone, so nobody waits for them.

    optuna fails a trial whose heartbeat has been silent for the grace period, but never one
    that has no heartbeat at all: a worker killed between creating its trial and its first
    heartbeat, or a client without heartbeats. Every worker here names itself on its trial
    (the ``worker`` attr) right after its heartbeat starts, so a running trial that has not
    done so ORPHAN_S after it started is failed too.
    """
    import datetime

    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start
        if "worker" in t.user_attrs or started is None or (now - started).total_seconds() <= ORPHAN_S:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            pass  # another worker got there first


def trial_counts(study: Any) -> tuple[int, int]:
    """(finished, running) trials of the study; finished is complete or pruned."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


class SurplusTrial(Exception):
    """A trial started by a worker that lost the race for the study's last open place."""


def trials_ahead(study: Any, number: int) -> int:
    """Finished or running trials numbered below ``number``: the ones that count before it.

    Two workers can both see one place left and both start a trial; the storage numbers
    trials in creation order, so the later one finds the earlier ahead of it and stands down.
    """
    from optuna.trial import TrialState

    live = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return sum(t.number < number for t in live)


def run_study(base: Config, settings: StudySettings, log: Callable[[str], None] = print) -> Any:
    """Work on the study until it holds ``settings.trials`` finished (complete or pruned)
    trials and none is left running, then return it."""
    import optuna

    from ris_model.batches import build_scenes
    from ris_model.hpo_sampler import trial_seed
    from ris_model.hpo_storage import GRACE_S, HEARTBEAT_S, shown_url
    from ris_model.training.plugins import plugin_callbacks
    from ris_model.training.train import Trainer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(settings)
    fail_stale_trials(study)
    space = search_space(base)
    base = base.with_values({"train.epochs": settings.epochs}, "hpo")
    train = build_scenes(base.system, base.train.train_scenes, base.train.seed)
    val = build_scenes(base.system, base.train.val_scenes, base.train.seed + 10_007)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", worker)
        if trials_ahead(study, trial.number) >= settings.trials:
            trial.set_user_attr("surplus", f"not needed: {settings.trials} trials were finished or running")
            optuna.logging.set_verbosity(optuna.logging.ERROR)  # no traceback for a planned stand-down
            raise SurplusTrial
        trial.set_user_attr("sampler_seed", trial_seed(settings.seed, trial.number))
        params = {name: suggest(trial, name, dist) for name, dist in space.items()}
        cfg = trial_config(base, params, trial.number)
        run_dir = settings.study_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("config_hash", cfg.hash)
        reporter = ReportToTrial(trial)
        options = {"run_dir": run_dir, "context": "hpo", "trial": trial, "rank": 0, "policy_file": None}
        callbacks = plugin_callbacks(options, disabled=set() if settings.health else {"health"})
        callbacks.append(reporter)
        if settings.extra_callbacks is not None:
            callbacks.extend(settings.extra_callbacks(trial))
        trainer = Trainer(cfg, run_dir, device=settings.device, callbacks=callbacks, train_scenes=train, val_scenes=val)
        t0 = time.perf_counter()
        result = trainer.fit()
        counts = health_counts(run_dir)
        trial.set_user_attr("health", counts)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        if result.interrupted:
            raise KeyboardInterrupt
        if result.stop_reason is not None:
            trial.set_user_attr("prune_reason", result.stop_message)
            log(f"trial {trial.number}: pruned: {result.stop_message}")
            raise optuna.TrialPruned(result.stop_message)
        log(f"trial {trial.number}: val {reporter.primary} {reporter.best:.4g} ({counts or 'no health events'})")
        return reporter.best

    finished, running = trial_counts(study)
    log(
        f"study {settings.study_name!r}: {max(0, settings.trials - finished)} of {settings.trials} trials to go "
        f"(storage {shown_url(storage_url(settings))}, worker {worker}, sampler seed {settings.seed})"
    )
    waiting = False
    while True:
        fail_stale_trials(study)
        finished, running = trial_counts(study)
        if finished >= settings.trials and running == 0:
            return study
        if finished + running < settings.trials:
            waiting = False
            try:
                study.optimize(objective, n_trials=1, catch=(SurplusTrial,))
            finally:
                optuna.logging.set_verbosity(optuna.logging.WARNING)
            continue
        if not waiting:
            waiting = True
            log(f"waiting for {running} trial(s) running in other workers "
                f"(one whose worker is silent for {GRACE_S} s is failed and run again)")
        time.sleep(HEARTBEAT_S)


def end_reason(trial: Any) -> str | None:
    """Why a trial ended other than complete: the pruner's or monitor's reason, a stand-down,
    or the worker it failed on (a killed worker's trial is failed by the heartbeat)."""
    reason = trial.user_attrs.get("prune_reason") or trial.user_attrs.get("surplus")
    if reason is None and trial.state.name == "FAIL":
        reason = f"failed on worker {trial.user_attrs.get('worker', '?')}"
    return reason


def study_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "health": t.user_attrs.get("health", {}),
                "reason": end_reason(t),
                "params": t.params,
            }
        )
    return rows


def render_study(study: Any):
    from rich.table import Table

    rows = study_rows(study)
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    best = min(complete, key=lambda r: r["value"]) if complete else None
    title = (
        f"study {study.study_name}: best trial {best['number']}, val {LossWeights.PRIMARY} {best['value']:.4g}"
        if best
        else f"study {study.study_name}: no complete trial"
    )
    table = Table(title=title)
    objective = f"val {LossWeights.PRIMARY}"
    for col in ("trial", "state", objective, "health", "why it ended / params"):
        table.add_column(col, justify="right" if col in ("trial", objective) else "left")
    for r in rows:
        health = ", ".join(f"{v} {k}" for k, v in sorted(r["health"].items())) or "clean"
        detail = r["reason"] or ", ".join(f"{k.split('.')[-1]}={v:.3g}" for k, v in r["params"].items())
        table.add_row(str(r["number"]), r["state"], "—" if r["value"] is None else f"{r['value']:.4g}", health, detail)
    return table

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
  (``postgresql://…``) to let workers on several machines share one study. Trials of a
  killed worker are failed by optuna's heartbeat and the study resumes where it was.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
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
HEARTBEAT_S, GRACE_S = 5, 15


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


def make_storage(url: str):
    import optuna

    if url.startswith(("sqlite", "postgresql", "mysql")):
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
        )
    return url


def _open_study(settings: StudySettings, attempts: int = 5) -> Any:
    """Create or join the study. Workers started together race to create the SQLite schema
    and the study row; the loser sees a locked database or a duplicate row for a moment,
    and simply tries again."""
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=settings.study_name,
                storage=make_storage(storage_url(settings)),
                direction="minimize",
                sampler=optuna.samplers.TPESampler(seed=settings.seed),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
                load_if_exists=True,
            )
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def run_study(base: Config, settings: StudySettings, log: Callable[[str], None] = print) -> Any:
    """Optimise until the study holds ``settings.trials`` finished (complete or pruned) trials."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from ris_model.batches import build_scenes
    from ris_model.training.plugins import plugin_callbacks
    from ris_model.training.train import Trainer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    study = _open_study(settings)
    optuna.storages.fail_stale_trials(study)
    space = search_space(base)
    base = base.with_values({"train.epochs": settings.epochs}, "hpo")
    train = build_scenes(base.system, base.train.train_scenes, base.train.seed)
    val = build_scenes(base.system, base.train.val_scenes, base.train.seed + 10_007)

    def objective(trial: Any) -> float:
        params = {name: suggest(trial, name, dist) for name, dist in space.items()}
        cfg = trial_config(base, params, trial.number)
        run_dir = settings.study_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
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

    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = settings.trials - len(study.get_trials(deepcopy=False, states=done_states))
    if remaining > 0:
        log(
            f"study {settings.study_name!r}: {remaining} of {settings.trials} trials to go "
            f"(storage {storage_url(settings)})"
        )
        study.optimize(objective, callbacks=[MaxTrialsCallback(settings.trials, states=done_states)], catch=())
    return study


def study_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "health": t.user_attrs.get("health", {}),
                "reason": t.user_attrs.get("prune_reason"),
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

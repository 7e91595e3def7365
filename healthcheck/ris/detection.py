"""The detection benchmark's engine: train with each fault and without, count what is flagged.

Every run is a short ``ris_model`` Trainer fit (a few seconds on a CPU) with the health
monitor attached through `RisTrainerHealth` and a policy that records everything and
never stops, so each run shows every event its fault causes. A faulty run counts as
detected when an event of severity error or higher fires at or after the step where the
fault starts acting; a healthy run with such an event is a false alarm. Healthy runs use
configs drawn from the HPO search space (``ris_model.hpo.search_space``), because a
detector that fires on a valid learning rate or loss-weight mix would prune real trials.

The harness is scored as CI uses it: before the monitored fit, the gate's preflight checks
(``healthcheck.ris.gate_subject``'s subject and config check) run on the faulted trainer
itself, its model, loss, optimizer, scheduler and a batch of its own training data. A
failed check is an error event ``preflight.<check>`` at step 0, so it detects a fault
that acts from step 0 with latency 0 (and is a false alarm on a healthy run). Each run
also keeps the monitor's own verdict, so one benchmark reports both the whole harness and
the monitor alone; ``preflight=False`` skips the checks.

``benchmarks/detection.py`` is the command line; tests call `run_benchmark` directly.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ris_model.config import Config, load_config
from ris_model.training.train import Trainer

from ..detectors import Detector, default_detectors
from ..events import SEVERITIES, HealthEvent, Severity
from ..faults import Fault
from ..monitor import Monitor
from ..policy import Policy
from ..preflight import run_checks
from ..sinks import JsonlSink
from .gate_subject import RisGateSubject, check_config
from .trainer_callback import HEALTH_FILE, RisTrainerHealth

EPOCHS = 3  # val.constant needs three evaluations; more epochs only cost time
BATCH_SIZE = 32
VAL_SCENES = 64

# Record every finding at its own severity and never stop: a run must show everything its
# fault causes, and a stop would end the run at the first finding.
RECORD_ALL = Policy(severity={s: "record" for s in SEVERITIES})


def base_config(preset: str, steps: int, seed: int, overrides: Mapping[str, Any] | None = None) -> Config:
    """The preset, shrunk to ``steps`` optimizer steps over `EPOCHS` epochs, then
    ``overrides`` (dotted config keys, e.g. a smaller ``model.width`` for tests).

    Warm-up lasts one epoch (the preset's 50 steps would cover the whole run).
    """
    if steps < EPOCHS:
        raise ValueError(f"steps must be at least {EPOCHS} (one per epoch), but got {steps=}")
    per_epoch = math.ceil(steps / EPOCHS)
    return load_config(preset).with_values({
        "train.epochs": EPOCHS, "train.batch_size": BATCH_SIZE, "train.train_scenes": per_epoch * BATCH_SIZE,
        "train.val_scenes": VAL_SCENES, "train.warmup_steps": per_epoch, "train.seed": seed, **(overrides or {}),
    }, "benchmark:detection")


def healthy_config(preset: str, steps: int, seed: int, overrides: Mapping[str, Any] | None = None) -> Config:
    """`base_config` with every HPO-searched value drawn at random (log-uniform where the
    search is), through the same ``trial_config`` the study uses."""
    from ris_model.hpo import search_space, trial_config

    cfg = base_config(preset, steps, seed, overrides)
    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {}
    for name, dist in search_space(cfg).items():
        params[name] = _draw(rng, dist)
    return trial_config(cfg, params, f"healthy-{seed}")


def _draw(rng: np.random.Generator, dist: Any) -> Any:
    """One value from an optuna Float/IntDistribution, without an optuna study."""
    low, high = dist.low, dist.high
    if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
        step = dist.step or 1
        return int(low + step * rng.integers(0, (high - low) // step + 1))
    if getattr(dist, "log", False):
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


@dataclass
class RunResult:
    """One fit: which fault (None for healthy), what fired, and when."""

    fault: str | None
    family: str | None
    seed: int
    detected: bool  # an error-level event at or after start_step (a false alarm if healthy)
    first_step: int | None  # step of the first such event
    codes: list[str]  # every code that fired (info and up), in order of first occurrence
    severity: dict[str, str] = field(default_factory=dict)  # code -> highest severity seen
    first_error_code: str | None = None
    start_step: int = 0
    early: list[str] = field(default_factory=list)  # error-level codes before start_step
    steps_taken: int = 0
    batches_seen: int = 0
    wall_s: float = 0.0
    crashed: str | None = None  # the exception that ended fit(), if any
    config: dict[str, Any] = field(default_factory=dict)  # values that differ between healthy runs
    monitor_detected: bool | None = None  # the verdict without the preflight events (None: same)
    monitor_first_step: int | None = None
    preflight_failed: list[str] = field(default_factory=list)  # names of failed preflight checks

    def __post_init__(self) -> None:
        if self.monitor_detected is None:  # no preflight ran: the monitor's verdict is the verdict
            self.monitor_detected, self.monitor_first_step = self.detected, self.first_step

    @property
    def latency(self) -> int | None:
        return None if self.first_step is None else self.first_step - self.start_step

    @property
    def monitor_latency(self) -> int | None:
        return None if self.monitor_first_step is None else self.monitor_first_step - self.start_step

    def to_json(self) -> dict[str, Any]:
        return {"fault": self.fault, "seed": self.seed, "detected": self.detected,
                "first_step": self.first_step, "codes": list(self.codes),
                "monitor_detected": self.monitor_detected, "monitor_first_step": self.monitor_first_step}


def judge(events: Sequence[HealthEvent], start_step: int) -> dict[str, Any]:
    """Detection verdict from a run's events: the first error-level event at or after
    ``start_step`` detects; error-level events before it are kept apart (``early``)."""
    codes: dict[str, Severity] = {}
    first: tuple[int, str] | None = None
    early: list[str] = []
    for e in events:
        if e.code == "monitor.summary":
            continue
        codes[e.code] = max(codes.get(e.code, e.severity), e.severity)
        if e.severity < Severity.ERROR:
            continue
        step = e.step if e.step is not None else 0
        if step < start_step:
            if e.code not in early:
                early.append(e.code)
        elif first is None or step < first[0]:
            first = (step, e.code)
    return {"codes": list(codes), "severity": {c: str(s) for c, s in codes.items()},
            "detected": first is not None, "first_step": None if first is None else first[0],
            "first_error_code": None if first is None else first[1], "early": early}


PREFLIGHT_PREFIX = "preflight."


class _NoDecay:
    """The trainer's LR scheduler as the micro-overfit steps it here: followed while it
    rises (a warm-up from 0 must still fail), never below a group's highest rate so far.

    The benchmark squeezes a run's whole schedule into a few dozen steps (warm-up 8,
    cosine down to ``min_lr_ratio`` by step 24), and the micro-overfit takes up to 100:
    stepped as is, the probe would spend most of its steps at 5 % of the rate, which no
    gated real run does in its first 100 steps (its schedule spans thousands). Measured:
    5 of 10 healthy HPO-space configs (lr <= 1.9e-4) then fail to halve the loss, while
    the same configs at their full length pass the gate in 30-41 steps.
    """

    def __init__(self, scheduler: Any) -> None:
        self._inner = scheduler
        self.optimizer = scheduler.optimizer

    def step(self) -> None:
        groups = self.optimizer.param_groups
        highest = [g["lr"] for g in groups]
        self._inner.step()
        for g, lr in zip(groups, highest):
            g["lr"] = max(g["lr"], lr)

    def state_dict(self) -> dict[str, Any]:
        return self._inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._inner.load_state_dict(state)


class _BenchmarkSubject(RisGateSubject):
    """The gate's subject for a trainer the benchmark built, with the probe's schedule
    view above; every check reads the trainer's own parts."""

    @property
    def scheduler(self) -> Any:
        inner = self.trainer.scheduler
        return None if inner is None else _NoDecay(inner)


def preflight_events(trainer: Trainer) -> list[HealthEvent]:
    """The gate's checks on a built (possibly faulted) trainer, as CI runs them before
    training: the config check, then every preflight check on the trainer's own model,
    loss, optimizer, scheduler (seen through `_NoDecay` by the micro-overfit) and first
    ``batch_size`` training scenes. Each failed check is an error event
    ``preflight.<name>`` at step 0.

    The micro-overfit restores the model, optimizer and scheduler it stepped; the random
    number generators are restored here too, so the monitored fit that follows is the fit
    the trainer would have run without the checks.
    """
    cuda = torch.cuda.is_available()
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state_all() if cuda else None)
    try:
        batch = trainer.train_data.take(slice(0, trainer.cfg.train.batch_size))
        checks = [check_config(trainer.cfg), *run_checks(_BenchmarkSubject(trainer, batch))]
    finally:
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
    return [HealthEvent(code=PREFLIGHT_PREFIX + c.name, severity=Severity.ERROR, step=0, epoch=0,
                        title=f"preflight check {c.name} failed", detail=c.detail, hint=c.hint,
                        where=c.name, evidence=_numbers(c.measured))
            for c in checks if not c.passed]


def _numbers(measured: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in measured.items() if isinstance(v, (int, float))}


def run_one(cfg: Config, fault: Fault | None, *, device: str = "auto", keep_dir: str | Path | None = None,
            detectors: Sequence[Detector] | None = None, preflight: bool = True) -> RunResult:
    """One monitored fit of ``cfg``, with ``fault`` applied to the built trainer first.

    ``detectors``: what the monitor runs (None: `default_detectors`). Detector instances
    hold settings only (the monitor keeps their state), so one list serves every run.
    ``preflight``: run the gate's checks on the faulted trainer before the fit (see
    `preflight_events`); their failures go through the monitor like any event.
    """
    name = "healthy" if fault is None else fault.name
    t0 = time.perf_counter()
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="detection-") as tmp:
        run_dir = Path(keep_dir) / f"{name}-s{cfg.train.seed}" if keep_dir else Path(tmp) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        sinks = [JsonlSink(run_dir / HEALTH_FILE)] if keep_dir else []
        health = RisTrainerHealth(Monitor(detectors, policy=RECORD_ALL, sinks=sinks, context="train"))
        trainer = Trainer(cfg, run_dir, device=device, callbacks=[health])
        crashed = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's "scheduler.step() before optimizer.step()"
            try:
                if fault is not None:
                    fault.apply(trainer)
                if preflight:
                    for event in preflight_events(trainer):
                        failed.append(event.where or event.code)
                        health.monitor.emit(event)
                trainer.fit()
            except Exception as err:  # a fault may crash the loop: that run is loud, not silent
                crashed = f"{type(err).__name__}: {err}"
                if not health.monitor.closed:
                    health.monitor.close()
        start = fault.start_step if fault else 0
        events = list(health.monitor.events)
        verdict = judge(events, start)
        alone = judge([e for e in events if not e.code.startswith(PREFLIGHT_PREFIX)], start)
    return RunResult(fault=None if fault is None else fault.name, family=None if fault is None else fault.family,
                     seed=cfg.train.seed, start_step=start,
                     steps_taken=trainer.state.steps_taken, batches_seen=trainer.state.batches_seen,
                     wall_s=time.perf_counter() - t0, crashed=crashed,
                     config=_varied(cfg) if fault is None else {}, monitor_detected=alone["detected"],
                     monitor_first_step=alone["first_step"], preflight_failed=failed, **verdict)


def _varied(cfg: Config) -> dict[str, Any]:
    w = cfg.loss.weights.as_dict()
    return {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay, "width": cfg.model.width,
            **{f"w_{k}": v for k, v in w.items()}}


@dataclass
class Benchmark:
    runs: list[RunResult]
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"summary": dict(self.summary), "runs": [r.to_json() for r in self.runs]}


def summarise(runs: Sequence[RunResult], wall_s: float) -> dict[str, Any]:
    """Recall (overall and per family), false-alarm rate (healthy runs with an error-level
    event), warning rate (healthy runs with a warning-level event), and latency in steps
    from each fault's start step, over the runs given; then the same recall and latencies
    for the monitor alone (without the preflight checks' events), and the median latency of
    the faults that act from step 0."""
    faulty = [r for r in runs if r.fault is not None]
    healthy = [r for r in runs if r.fault is None]
    by_family: dict[str, list[RunResult]] = {}
    for r in faulty:
        by_family.setdefault(r.family or "?", []).append(r)
    latencies = [r.latency for r in faulty if r.detected and r.latency is not None]
    alone = [r.monitor_latency for r in faulty if r.monitor_detected and r.monitor_latency is not None]
    step0 = [r.latency for r in faulty if r.start_step == 0 and r.detected and r.latency is not None]
    step0_alone = [r.monitor_latency for r in faulty
                   if r.start_step == 0 and r.monitor_detected and r.monitor_latency is not None]
    return {
        "recall": _rate(faulty, lambda r: r.detected),
        "recall_by_family": {f: _rate(rs, lambda r: r.detected) for f, rs in sorted(by_family.items())},
        "false_alarm_rate": _rate(healthy, lambda r: r.detected),
        # warnings apart from errors: a run with a warning-level event, whatever else fired
        "warning_rate_healthy": _rate(healthy, lambda r: "warning" in r.severity.values()),
        "median_latency_steps": _median(latencies),
        "max_latency_steps": max(latencies) if latencies else None,
        "wall_s": round(wall_s, 2),
        "monitor_only_recall": _rate(faulty, lambda r: bool(r.monitor_detected)),
        "monitor_only_false_alarm_rate": _rate(healthy, lambda r: bool(r.monitor_detected)),
        "monitor_only_median_latency_steps": _median(alone),
        "step0_median_latency_steps": _median(step0),
        "monitor_only_step0_median_latency_steps": _median(step0_alone),
    }


def _median(values: Sequence[int]) -> float | None:
    return statistics.median(values) if values else None


def _rate(runs: Sequence[RunResult], hit: Callable[[RunResult], bool]) -> float | None:
    return sum(1 for r in runs if hit(r)) / len(runs) if runs else None


def run_benchmark(faults: Sequence[Fault], *, seeds: int = 3, healthy: int = 10, preset: str = "tiny",
                  steps: int = 24, device: str = "auto", keep_dir: str | Path | None = None,
                  detectors: Sequence[Detector] | None = None, overrides: Mapping[str, Any] | None = None,
                  on_run: Callable[[RunResult, int, int], None] | None = None,
                  preflight: bool = True) -> Benchmark:
    """Every fault × ``seeds`` seeds on the preset's config, then ``healthy`` runs on configs
    drawn from the HPO space (``overrides`` applies to both). ``detectors`` replaces the
    monitor's default set (e.g. to try a candidate detector against every fault);
    ``on_run(result, done, total)`` reports progress; ``preflight=False`` scores the
    monitor alone (no gate checks before the fit)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
        raise ValueError(f"seeds must be an integer >= 0, but got {seeds=}")
    if isinstance(healthy, bool) or not isinstance(healthy, int) or healthy < 0:
        raise ValueError(f"healthy must be an integer >= 0, but got {healthy=}")
    late = [f.name for f in faults if f.start_step >= steps - 1]
    if late:
        raise ValueError(
            f"faults {late} start at or after the last of {steps=} steps, so they would "
            f"never be seen acting; raise --steps"
        )
    plan: list[tuple[Config, Fault | None]] = []
    for fault in faults:
        for seed in range(seeds):
            plan.append((base_config(preset, steps, seed, overrides), fault))
    for i in range(healthy):
        plan.append((healthy_config(preset, steps, 1000 + i, overrides), None))
    t0 = time.perf_counter()
    runs: list[RunResult] = []
    for cfg, planned in plan:
        runs.append(run_one(cfg, planned, device=device, keep_dir=keep_dir, detectors=detectors, preflight=preflight))
        if on_run is not None:
            on_run(runs[-1], len(runs), len(plan))
    return Benchmark(runs, summarise(runs, time.perf_counter() - t0))


def load_detectors(path: str | Path) -> list[Detector]:
    """The ``DETECTORS`` list of a Python file (candidate detectors to try), executed fresh."""
    import importlib.util
    import sys

    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise ValueError(f"a detector file is an existing .py file defining DETECTORS = [...], but got {str(path)!r}")
    name = f"_healthcheck_detectors_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{str(path)!r} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    found = getattr(module, "DETECTORS", None)
    if not isinstance(found, (list, tuple)) or not all(isinstance(d, Detector) for d in found):
        raise ValueError(f"{str(path)!r} must define DETECTORS = [Detector instances], but got {found!r}")
    return list(found)


__all__ = [
    "BATCH_SIZE",
    "Benchmark",
    "EPOCHS",
    "PREFLIGHT_PREFIX",
    "RECORD_ALL",
    "RunResult",
    "base_config",
    "default_detectors",
    "healthy_config",
    "judge",
    "load_detectors",
    "preflight_events",
    "run_benchmark",
    "run_one",
    "summarise",
]

"""The detection benchmark on the plain-PyTorch subjects: faults caught, false alarms, latency.

Each run trains one subject (``healthcheck.testing.subjects``) for ``steps`` optimizer
steps under a `TrainingHealth` whose policy records every event and never stops. A faulty
run is detected when an error-level (or critical) event fires at or after the step where
its fault starts acting; a healthy run with one is a false alarm. Healthy runs cover every
variation in `VARIANTS` (accumulation, clipping after the monitor, a warm-up from a small
rate, bf16 autocast, a frozen part) on one seed, and the plain loop on further seeds.
There are no preflight checks here: this scores the monitor alone.

``benchmarks/detection.py --subject NAME`` is the command line; tests call `run_one`.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..detectors import Detector
from ..events import SEVERITIES, Severity
from ..faults import Fault
from ..integrations.torch_loop import TrainingHealth
from ..policy import Policy
from .subjects import SUBJECTS, VARIANTS, train

RECORD_ALL = Policy(severity={s: "record" for s in SEVERITIES})


@dataclass
class SubjectRun:
    """One monitored training run of a subject."""

    subject: str
    fault: str | None
    family: str | None
    variant: str
    seed: int
    start_step: int
    detected: bool  # an error-level event at or after start_step
    first_step: int | None
    first_code: str | None
    codes: dict[str, str] = field(default_factory=dict)  # code -> highest severity
    wall_s: float = 0.0
    crashed: str | None = None

    @property
    def latency(self) -> int | None:
        return None if self.first_step is None else self.first_step - self.start_step

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "fault": self.fault, "variant": self.variant, "seed": self.seed,
                "detected": self.detected, "first_step": self.first_step, "first_code": self.first_code,
                "latency": self.latency, "codes": self.codes, "crashed": self.crashed,
                "wall_s": round(self.wall_s, 2)}


def monitored(setup: Any, detectors: Sequence[Detector] | None = None, **kwargs: Any) -> TrainingHealth:
    """A `TrainingHealth` for a subject's setup that records everything and writes nothing."""
    return TrainingHealth(setup.model, setup.optimizer, None, detectors=detectors, policy=RECORD_ALL,
                          sinks=[], **kwargs)


def run_one(subject: str, seed: int, *, fault: Fault | None = None, variant: str = "plain", steps: int = 200,
            detectors: Sequence[Detector] | None = None) -> SubjectRun:
    """Train ``subject`` once (with ``fault`` applied to its setup) and judge the events."""
    module = SUBJECTS[subject]
    t0 = time.perf_counter()
    setup = module.build(seed, variant, steps)
    if fault is not None:
        fault.apply(setup)
    health = monitored(setup, detectors, total_steps=steps)
    crashed = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            train(setup, health, steps)
        except Exception as err:  # a fault may crash the loop: loud, not silent
            crashed = f"{type(err).__name__}: {err}"
    health.close()
    start = fault.start_step if fault is not None else 0
    codes: dict[str, Severity] = {}
    first: tuple[int, str] | None = None
    for e in health.monitor.events:
        if e.code == "monitor.summary":
            continue
        codes[e.code] = max(codes.get(e.code, e.severity), e.severity)
        step = e.step or 0
        if e.severity >= Severity.ERROR and step >= start and (first is None or step < first[0]):
            first = (step, e.code)
    return SubjectRun(subject=subject, fault=None if fault is None else fault.name,
                      family=None if fault is None else fault.family, variant=variant, seed=seed,
                      start_step=start, detected=first is not None,
                      first_step=None if first is None else first[0], first_code=None if first is None else first[1],
                      codes={c: str(s) for c, s in codes.items()}, wall_s=time.perf_counter() - t0, crashed=crashed)


def plan(subjects: Sequence[str], *, seeds: int = 2, healthy_seeds: int = 3,
         faults: Sequence[str] | None = None) -> list[tuple[str, int, Fault | None, str]]:
    """(subject, seed, fault, variant) of every run: each fault × ``seeds``, every variant on
    seed 0, and the plain loop on ``healthy_seeds`` - 1 more seeds."""
    out: list[tuple[str, int, Fault | None, str]] = []
    for name in subjects:
        chosen = [f for f in SUBJECTS[name].FAULTS if faults is None or f.name in faults]
        out += [(name, seed, f, "plain") for f in chosen for seed in range(seeds)]
        out += [(name, 100, None, v) for v in VARIANTS]
        out += [(name, 100 + s, None, "plain") for s in range(1, healthy_seeds)]
    return out


def summarise(runs: Sequence[SubjectRun]) -> dict[str, Any]:
    """Per subject and over all: recall, false alarms (healthy runs with an error-level
    event), warning rate on healthy runs, median and max latency in steps."""
    def one(rs: Sequence[SubjectRun]) -> dict[str, Any]:
        faulty = [r for r in rs if r.fault is not None]
        healthy = [r for r in rs if r.fault is None]
        lat = [r.latency for r in faulty if r.detected and r.latency is not None]
        return {
            "faulty_runs": len(faulty), "healthy_runs": len(healthy),
            "recall": _rate([r.detected for r in faulty]),
            "monitor_only_recall": _rate([r.detected for r in faulty]),
            "false_alarms": sum(r.detected for r in healthy),
            "false_alarm_rate": _rate([r.detected for r in healthy]),
            "warning_rate_healthy": _rate(["warning" in r.codes.values() for r in healthy]),
            "median_latency_steps": statistics.median(lat) if lat else None,
            "max_latency_steps": max(lat) if lat else None,
            "missed": sorted({r.fault for r in faulty if not r.detected}),
        }
    by_subject: dict[str, Any] = {}
    for r in runs:
        by_subject.setdefault(r.subject, []).append(r)
    return {"all": one(runs), "by_subject": {k: one(v) for k, v in by_subject.items()}}


def _rate(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


class _Unmonitored:
    """Stands in for `TrainingHealth` in the loop and does nothing."""

    def after_backward(self, *args: Any, **kwargs: Any) -> None:
        return None

    def after_step(self, *args: Any, **kwargs: Any) -> None:
        return None


class _StepClock:
    """Wraps a health object: the wall time of every step, and the time spent inside the
    health calls of every step."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.steps: list[float] = []
        self.inside: list[float] = []
        self._in_calls = 0.0
        self._last = time.perf_counter()
        if hasattr(inner, "before_backward"):
            self.before_backward = self._timed(inner.before_backward)
        self.after_backward = self._timed(inner.after_backward)
        self._after_step = self._timed(inner.after_step)

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._in_calls += time.perf_counter() - t0
        return call

    def after_step(self, *args: Any, **kwargs: Any) -> Any:
        out = self._after_step(*args, **kwargs)
        now = time.perf_counter()
        self.steps.append(now - self._last)
        self.inside.append(self._in_calls)
        self._last, self._in_calls = now, 0.0
        return out


COST_VARIANTS: dict[str, Callable[[Any], Any]] = {
    "bare": lambda setup: _Unmonitored(),
    "monitor without the new signals": lambda setup: monitored(setup, watch_grad_clearing=False, probe_every=0),
    "monitor (default)": lambda setup: monitored(setup),
}


def monitor_cost(subject: str, *, rounds: int = 8, steps: int = 60, skip: int = 5) -> dict[str, Any]:
    """What the monitor costs per step of ``subject``'s loop: the loop bare, monitored
    without the gradient-clearing watch and the probes, and monitored by default, run in
    interleaved rounds so machine noise hits them alike. Per variant: the median step
    (seconds; the first ``skip`` steps of a round left out) and the mean time spent inside
    the health calls per step."""
    times: dict[str, list[float]] = {k: [] for k in COST_VARIANTS}
    inside: dict[str, list[float]] = {k: [] for k in COST_VARIANTS}
    for r in range(rounds):
        for name, make in COST_VARIANTS.items():
            setup = SUBJECTS[subject].build(r, "plain", steps)
            clock = _StepClock(make(setup))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train(setup, clock, steps)
            if hasattr(clock.inner, "close"):
                clock.inner.close()
            times[name] += clock.steps[skip:]
            inside[name] += clock.inside[skip:]
    bare = statistics.median(times["bare"])
    return {"subject": subject, "rounds": rounds, "steps": steps,
            "variants": {k: {"median_step_s": statistics.median(v), "vs_bare": statistics.median(v) / bare - 1,
                             "inside_calls_s": statistics.mean(inside[k])} for k, v in times.items()}}


def run_subjects(subjects: Sequence[str], *, seeds: int = 2, healthy_seeds: int = 3, steps: int = 200,
                 faults: Sequence[str] | None = None, detectors: Sequence[Detector] | None = None,
                 on_run: Callable[[SubjectRun, int, int], None] | None = None,
                 threads: int = 1) -> tuple[list[SubjectRun], dict[str, Any]]:
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        raise ValueError(f"unknown subject(s) {unknown}; known: {', '.join(SUBJECTS)}")
    torch.set_num_threads(threads)
    todo = plan(subjects, seeds=seeds, healthy_seeds=healthy_seeds, faults=faults)
    runs: list[SubjectRun] = []
    t0 = time.perf_counter()
    for name, seed, fault, variant in todo:
        runs.append(run_one(name, seed, fault=fault, variant=variant, steps=steps, detectors=detectors))
        if on_run is not None:
            on_run(runs[-1], len(runs), len(todo))
    summary = summarise(runs)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    return runs, summary


__all__ = ["RECORD_ALL", "SubjectRun", "monitor_cost", "monitored", "plan", "run_one", "run_subjects", "summarise"]

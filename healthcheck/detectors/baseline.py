"""A validation metric that does not beat the baseline the run declared for it.

A trained model is worth its cost only if it does better than what needs no training: a
constant predictor, the classical estimate it was meant to improve on, last year's model.
A model that never gets there trains, converges and looks healthy on every curve; only the
comparison shows it. So an evaluation may carry, next to its own numbers, the score of a
baseline on the same validation data, and this rule compares them.

The convention (docs/run-dir.md): an ``eval`` record's ``metrics`` may hold

* ``baseline/<name>``: a baseline for a metric where lower is better (losses, errors), and
* ``baseline_max/<name>``: a baseline for a metric where higher is better (accuracy, F1),

where ``<name>`` is ``loss`` (the record's validation loss), a key of ``metrics`` or a key
of ``terms``, looked up in that order. Lower is better by default because losses are what
every loop reports; a higher-is-better metric has to say so in its key, so a file judged
offline carries the direction with the number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, Detector, check_int, fmt

LOWER = "baseline/"  # the model should end up below this value
HIGHER = "baseline_max/"  # the model should end up above this value


def baseline_metrics(baselines: Mapping[str, Any] | None,
                     higher_is_better: Iterable[str] = ()) -> dict[str, Any]:
    """The ``metrics`` keys that declare ``baselines`` ({metric name: baseline value}):
    ``baseline/<name>``, or ``baseline_max/<name>`` for a name in ``higher_is_better``."""
    higher = set(higher_is_better)
    unknown = higher - set(baselines or {})
    if unknown:
        raise ValueError(f"higher_is_better names metrics without a baseline: {sorted(unknown)}; "
                         f"declare their baselines in baselines= too")
    return {(HIGHER if name in higher else LOWER) + name: value for name, value in (baselines or {}).items()}


def declared_baselines(record: StepRecord) -> list[tuple[str, float, bool]]:
    """(metric name, baseline value, higher is better) for each baseline ``record`` declares."""
    out = []
    for key, value in record.metrics.items():
        if key.startswith(LOWER):
            out.append((key[len(LOWER):], value, False))
        elif key.startswith(HIGHER):
            out.append((key[len(HIGHER):], value, True))
    return out


def model_value(record: StepRecord, name: str) -> float | None:
    """The model's own value of metric ``name`` in ``record`` (None: not reported)."""
    if name == "loss":
        return record.loss
    value = record.metrics.get(name)
    return record.terms.get(name) if value is None else value


@dataclass
class _BaselineState:
    evals: dict[str, int] = field(default_factory=dict)  # evaluations seen with a baseline, per metric
    behind: dict[str, int] = field(default_factory=dict)  # consecutive ones past warm-up not beating it


class BelowBaseline(Detector):
    """A validation metric is no better than its declared baseline (``val.below_baseline``):
    a warning at each evaluation past the first ``warmup`` that does not beat it, an error
    once ``patience`` of them in a row did not.

    A model trained from scratch starts worse than any sensible baseline, and a healthy
    one passes it within its first epochs: a small regression that can learn beats the
    constant predictor's validation loss at its first evaluation (2.6 against 5.6), and
    the RIS network on ``tiny`` beats R_bp's loss at its first (0.93 against 1.46). Three
    evaluations of warm-up leave room for a slower start (a learning-rate warm-up, a
    schedule that raises a term's weight) without waiting long. Five in a row past it
    that never beat the baseline are not a slow start: the model has settled at or above
    what needs no training (the same RIS network's MUSIC median angle error stays at
    5.3-9.0 deg against R_bp's 3.9 deg for all of its first 8 evaluations). "Beat" is
    strict: a tie is not a gain. Each metric is judged on its own, so one that beats its
    baseline does not hide one that does not.
    """

    codes = (Code("val.below_baseline", Severity.WARNING, Severity.ERROR,
                  meaning="A validation metric has not beaten the baseline declared for it (a "
                          "constant predictor, the classical estimate) on the same data.",
                  fix="The model adds nothing over the baseline: check that it sees information "
                      "the baseline does not (inputs, capacity, a loss that rewards beating it), "
                      "and that the baseline is scored on the same data and metric."),)
    phases = frozenset({"eval"})

    def __init__(self, warmup: int = 3, patience: int = 5) -> None:
        self.warmup = check_int("warmup", warmup, 0)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _BaselineState:
        return _BaselineState()

    def check(self, record: StepRecord, state: _BaselineState, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.kind != "eval" or not record.metrics:
            return NO_EVENTS
        events = []
        for name, baseline, higher in declared_baselines(record):
            value = model_value(record, name)
            if value is None or not (math.isfinite(value) and math.isfinite(baseline)):
                continue  # not measured, or another rule's finding
            n = state.evals[name] = state.evals.get(name, 0) + 1
            beats = value > baseline if higher else value < baseline
            if n <= self.warmup or beats:
                state.behind[name] = 0
                continue
            behind = state.behind[name] = state.behind.get(name, 0) + 1
            events.append(self._event(record, name, value, baseline, higher, behind))
        return events

    def _event(self, record: StepRecord, name: str, value: float, baseline: float, higher: bool,
               behind: int) -> HealthEvent:
        worse = "below" if higher else "above"
        severity = Severity.ERROR if behind >= self.patience else Severity.WARNING
        return self.event(
            "val.below_baseline", record, where=name, severity=severity,
            title=f"validation {name} {fmt(value)} does not beat its baseline {fmt(baseline)} "
                  f"({behind} evaluation{'s' if behind > 1 else ''} in a row)",
            detail=(f"{name} = {value!r} is at or {worse} the declared baseline {baseline!r} "
                    f"({'higher' if higher else 'lower'} is better) at epoch {record.epoch}, "
                    f"{behind} consecutive evaluation{'s' if behind > 1 else ''} after the first "
                    f"{self.warmup}; {self.patience} in a row make it an error."),
            evidence={"value": value, "baseline": baseline, "evals": behind})

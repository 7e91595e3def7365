"""Checks on the learning rate of every optimizer param group, before each step.

A schedule is a formula nobody looks at after writing it: warm-ups that start at exactly
0, start factors applied to an already small base rate (docs/failure-catalogue.md row 2), decays below
any useful value. The learning rate actually in the optimizer, per group and per step,
is recorded in ``record.lr``; these checks judge it before the step uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, Detector, DetectorState, check_float, check_int

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.columns import MetricBlock


@dataclass
class _GroupCounts:
    counts: list[int] = field(default_factory=list)

    def bump(self, hits: Sequence[bool]) -> list[int]:
        if len(self.counts) != len(hits):
            self.counts = [0] * len(hits)
        c = self.counts
        for i, h in enumerate(hits):
            c[i] = c[i] + 1 if h else 0
        return c


class InvalidLR(Detector):
    """A group's learning rate is negative or non-finite (``lr.invalid``, critical).

    Immediate: a step with it moves the weights uphill or to NaN.
    """

    codes = (Code("lr.invalid", Severity.CRITICAL,
                  meaning="A parameter group's learning rate is negative or non-finite.",
                  fix="A schedule formula error; an optimizer step with it moves the weights the "
                      "wrong way or to NaN."),)
    phases = frozenset({"after_backward"})
    memory = 0

    def check(self, record: StepRecord, state: DetectorState, live: LiveView | None) -> Sequence[HealthEvent]:
        out = []
        for i, lr in enumerate(record.lr):
            if math.isfinite(lr) and lr >= 0:
                continue
            out.append(self.event(
                "lr.invalid", record, where=f"group{i}",
                title=f"learning rate of param group {i} is {lr}",
                detail=f"Param group {i} has lr = {lr!r} at step {record.step}; all groups: {record.lr}.",
                evidence={"lr": lr, "group": i}))
        return out or NO_EVENTS

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        lr = block.lr()
        return (~np.isfinite(lr) | (lr < 0)).any(axis=1)


class ZeroLR(Detector):
    """A group's learning rate is exactly 0 for ``patience`` steps (``lr.zero``).

    patience=2: common linear warm-ups begin at exactly 0 for a single step, which wastes
    one batch and nothing more; two zero steps in a row is a schedule that sits at 0.
    """

    codes = (Code("lr.zero", Severity.ERROR,
                  meaning="A parameter group's learning rate is exactly 0 for consecutive steps.",
                  fix="A warm-up or schedule that starts at, or decays to, 0; a scheduler stepped "
                      "before the optimizer; a group created with lr=0."),)
    phases = frozenset({"after_backward"})
    memory = 1

    def __init__(self, patience: int = 2) -> None:
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _GroupCounts:
        return _GroupCounts()

    def check(self, record: StepRecord, state: _GroupCounts, live: LiveView | None) -> Sequence[HealthEvent]:
        if not record.lr:
            return NO_EVENTS
        counts = state.bump([lr == 0.0 for lr in record.lr])
        out = []
        for i, n in enumerate(counts):
            if n >= self.patience:
                out.append(self.event(
                    "lr.zero", record, where=f"group{i}",
                    title=f"learning rate of param group {i} is 0 for {n} steps",
                    detail=(f"Param group {i} had lr = 0.0 on each of the last {n} steps: its "
                            f"parameters cannot move. All groups: {record.lr}."),
                    evidence={"lr": 0.0, "group": i, "steps": n}))
        return out or NO_EVENTS

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        return (block.lr() == 0.0).any(axis=1)


@dataclass
class _TinyState(_GroupCounts):
    from_start: list[bool] = field(default_factory=list)  # below min_lr on every step so far


class TinyLR(Detector):
    """A group's learning rate is in (0, ``min_lr``) for ``patience`` steps (``lr.tiny``).

    1e-7 is below the smallest rate at which typical optimizers make measurable progress in
    float32 weights (Adam moves each weight by ~lr per step; 1e-7 of a weight of order
    0.01-1 is under or near float32 resolution); catalogue row 2's 1 % of 2e-6 = 2e-8 is
    caught. 10 steps so the first values of a warm-up from a small start do not fire.

    A warning when the rate decayed there (the tail of a schedule that decays to ~0); an
    error when the group has been below ``min_lr`` since its first step: the run never
    had a usable learning rate (a warm-up that starts at 0 counts as below).
    """

    codes = (Code("lr.tiny", Severity.WARNING, Severity.ERROR,
                  meaning="A parameter group's learning rate is positive but implausibly small.",
                  fix="A warm-up start factor or decay floor applied to an already small base "
                      "rate; check the schedule's first values."),)
    phases = frozenset({"after_backward"})
    memory = 1  # a row with every rate >= min_lr ends every streak and every "since the start"

    def __init__(self, min_lr: float = 1e-7, patience: int = 10) -> None:
        self.min_lr = check_float("min_lr", min_lr, lo=0.0, lo_open=True)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _TinyState:
        return _TinyState()

    def check(self, record: StepRecord, state: _TinyState, live: LiveView | None) -> Sequence[HealthEvent]:
        if not record.lr:
            return NO_EVENTS
        lrs = record.lr
        if len(state.from_start) != len(lrs):  # first record, or the groups changed
            state.from_start = [True] * len(lrs)
        low = state.from_start
        for i, lr in enumerate(lrs):
            low[i] = low[i] and lr < self.min_lr
        counts = state.bump([0.0 < lr < self.min_lr for lr in lrs])
        out = []
        for i, n in enumerate(counts):
            if n >= self.patience:
                lr = lrs[i]
                since = " since the first step" if low[i] else ""
                out.append(self.event(
                    "lr.tiny", record, where=f"group{i}", severity=Severity.ERROR if low[i] else None,
                    title=f"learning rate of param group {i} is only {lr:.2e}{since}",
                    detail=(f"Param group {i} has had lr < {self.min_lr:g} for {n} steps (now {lr!r})"
                            f"{since}; updates of this size barely change float32 weights."),
                    evidence={"lr": lr, "group": i, "steps": n, "from_start": low[i]}))
        return out or NO_EVENTS

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        lr = block.lr()
        return np.asarray((~(lr >= self.min_lr)).any(axis=1))


@dataclass
class _SpentState:
    peaks: list[float] = field(default_factory=list)  # each group's highest rate so far
    streak: int = 0  # consecutive steps with every group below `fraction` of its peak


class ScheduleSpentEarly(Detector):
    """Every group's learning rate has been below ``fraction`` (1 %) of its own peak for
    ``patience`` (10) steps while less than ``before`` (80 %) of the run's planned steps
    have run (``lr.spent_early``, error).

    A schedule built for the wrong length (an exponential decay meant per epoch stepped
    every batch, a cosine over the steps of one epoch) reaches ~0 long before the run ends,
    and the rest of the run learns nothing; at any one step it looks like a schedule that
    ends on time, so the check needs the planned length (``TrainingHealth(total_steps=)``;
    the Lightning, Hugging Face and ris_model integrations pass their own). Healthy shapes
    reach 1 % of their peak late or never: cosine to 0 at 94 % of the run, linear to 0 at
    99 %, OneCycle at 96 %, warm-up then cosine to a floor never, two ×0.1 steps exactly at
    1 % (not below). Silent without a planned length.
    """

    codes = (Code("lr.spent_early", Severity.ERROR,
                  meaning="Every learning rate fell below 1 % of its peak with much of the planned run "
                          "still to go: the schedule was built for another length.",
                  fix="Step the scheduler as often as it was built for (per epoch or per batch), and "
                      "build it for the run's real number of optimizer steps."),)
    phases = frozenset({"after_backward"})
    needs_live = True

    def __init__(self, fraction: float = 0.01, before: float = 0.8, patience: int = 10) -> None:
        self.fraction = check_float("fraction", fraction, lo=0.0, hi=1.0, lo_open=True)
        self.before = check_float("before", before, lo=0.0, hi=1.0, lo_open=True)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _SpentState:
        return _SpentState()

    def check(self, record: StepRecord, state: _SpentState, live: LiveView | None) -> Sequence[HealthEvent]:
        planned = getattr(live, "planned_steps", None)
        lrs = record.lr
        if not planned or not lrs or not all(math.isfinite(lr) for lr in lrs):
            return NO_EVENTS
        if len(state.peaks) != len(lrs):
            state.peaks = [0.0] * len(lrs)
        state.peaks = [max(p, lr) for p, lr in zip(state.peaks, lrs)]
        spent = all(peak > 0 and lr < self.fraction * peak for lr, peak in zip(lrs, state.peaks))
        state.streak = state.streak + 1 if spent else 0
        done = (record.step + 1) / planned
        if state.streak < self.patience or done >= self.before:
            return NO_EVENTS
        ratio = max(lr / peak for lr, peak in zip(lrs, state.peaks))
        return (self.event(
            "lr.spent_early", record, where="schedule",
            title=f"learning rate at {ratio:.2%} of its peak after {done:.0%} of the planned steps",
            detail=(f"Every param group's rate has been below {self.fraction:.0%} of its own peak for "
                    f"{state.streak} steps (now {lrs}, peaks {state.peaks}), at step {record.step + 1} of "
                    f"{planned} planned: the remaining {planned - record.step - 1} steps can barely move "
                    f"the weights."),
            evidence={"ratio": ratio, "done": done, "planned_steps": planned, "streak": state.streak}),)

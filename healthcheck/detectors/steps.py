"""Checks that optimizer steps are actually applied: step counters and the AMP scaler.

A loop can see every batch and apply no step: a gate that vetoes steps until every module
has a gradient (docs/failure-catalogue.md row 3), an AMP scaler that keeps finding inf and skipping
(row 4). Nothing crashes; the loss just stays where it was. The signal is the difference
between batches seen and steps applied, and the scaler's own state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, BlockEvents, Detector, check_float, check_int

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.columns import MetricBlock


@dataclass
class _CounterState:
    history: deque[tuple[int, int]] = field(default_factory=deque)
    batches: int = 0  # counters synthesised from record.skipped when the record has none
    steps: int = 0


class SkippedSteps(Detector):
    """Fewer steps applied than attempted over ``window`` attempts (``steps.skipped``).

    A record is one optimizer-step attempt, however many batches it accumulated (what
    `TrainingHealth` with ``batches=N``, the Lightning and Hugging Face callbacks and the
    ris Trainer write): its ``step`` counts attempts and ``steps_taken`` the steps applied,
    so gradient accumulation needs no setting. Without counters the ``skipped`` flags are
    counted. More than ``max_fraction`` (half) of the attempts not applied is a warning;
    not a single step applied in the window is an error.

    ``accumulation``: only for a source that writes one record per batch and applies a
    step every ``accumulation`` batches; the window then counts ``batches_seen``.

    Without waiting for a window: no step at all applied since the run started, after
    ``first_batches`` attempts (2: one can be a warm-up that begins with a vetoed step;
    two in a row cannot), is an error at once. Judged only on the record's own counters
    (a run from its start) and not under AMP, whose scaler may skip its first steps while
    it calibrates its scale (``amp.*`` judge those).
    """

    codes = (Code("steps.skipped", Severity.WARNING, Severity.ERROR,
                  meaning="Fewer optimizer steps were applied than attempted over a window.",
                  fix="A gate that vetoes steps, AMP overflows, or a loop that accumulates gradients "
                      "without saying so: report one step per optimizer step "
                      "(after_backward(..., batches=N))."),)
    phases = frozenset({"after_step"})

    def __init__(self, window: int = 20, max_fraction: float = 0.5, accumulation: int | None = None,
                 first_batches: int | None = 2) -> None:
        self.window = check_int("window", window, 2)
        self.max_fraction = check_float("max_fraction", max_fraction, lo=0.0, hi=1.0)
        self.accumulation = None if accumulation is None else check_int("accumulation", accumulation, 1)
        self.first_batches = None if first_batches is None else check_int("first_batches", first_batches, 1)

    def new_state(self) -> _CounterState:
        return _CounterState(history=deque(maxlen=self.window + 1))

    def check(self, record: StepRecord, state: _CounterState, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.kind != "step":
            return NO_EVENTS
        b, s = self._attempts(record), record.steps_taken
        if b is None or s is None:
            if record.skipped is None:
                return NO_EVENTS
            state.batches += 1
            state.steps += 0 if record.skipped else 1
            b, s = state.batches, state.steps
        state.history.append((b, s))
        per_step = self.accumulation or 1
        unit = "batches" if self.accumulation else "attempts"
        if (self.first_batches is not None and record.steps_taken == 0 and record.batches_seen is not None
                and record.amp is None and b >= self.first_batches * per_step):
            return (self.event(
                "steps.skipped", record, where="optimizer", severity=Severity.ERROR,
                title=f"no optimizer step applied in the first {b} {unit}",
                detail=(f"{b} optimizer-step {unit} were made since the run started and not one "
                        f"step was applied ({record.batches_seen} batches seen)."),
                evidence={"batches": b, "steps": 0, "missing_fraction": 1.0}),)
        b0, s0 = state.history[0]
        seen, taken = b - b0, s - s0
        if seen < self.window:
            return NO_EVENTS
        expected = seen / per_step
        missing = max(0.0, 1.0 - taken / expected)
        if taken > 0 and missing <= self.max_fraction:
            return NO_EVENTS
        severity = Severity.ERROR if taken == 0 else None
        return (self.event(
            "steps.skipped", record, where="optimizer", severity=severity,
            title=(f"no optimizer step applied in the last {seen} {unit}" if taken == 0 else
                   f"only {taken} of {expected:.0f} expected optimizer steps applied"),
            detail=(f"Over the last {seen} {unit}, {taken} optimizer steps were applied "
                    f"({missing:.0%} missing"
                    + (f"; accumulation={self.accumulation}" if self.accumulation else "")
                    + f"). In total {s} steps applied, {record.batches_seen} batches seen."),
            evidence={"batches": seen, "steps": taken, "missing_fraction": missing}),)

    def _attempts(self, record: StepRecord) -> int | None:
        """The counter the window runs on: step attempts so far (``step`` + 1), or batches
        seen for a one-record-per-batch source with a fixed ``accumulation``; None when the
        record carries no counters."""
        if record.batches_seen is None:
            return None
        return record.batches_seen if self.accumulation else record.step + 1

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    @property  # the window is a setting, so the memory is too
    def memory(self) -> int:  # type: ignore[override]
        """window + 1: the state is the (batches, steps) counters of that many rows."""
        return self.window + 1

    def screen(self, block: MetricBlock) -> np.ndarray | None:
        # A row can fire only within ``window`` rows after a step went missing (batches
        # minus steps grew), or when no step was ever taken; rows near the block's start
        # may follow a miss in the block before.
        seen, taken = self._block_attempts(block), block.scalar("steps_taken")
        gap = seen - taken
        miss = ~np.isfinite(gap) | (taken == 0)
        miss[1:] |= gap[1:] != gap[:-1]
        miss[: self.memory] = True
        return _spread(miss, self.memory)

    def check_block(self, block: MetricBlock, rows: np.ndarray, state: _CounterState) -> BlockEvents | None:
        """A block whose every row has counters, a step taken, and as many batches seen
        per step as before, after a window with none missing either: no row can fire, and
        the state is the last window of counters. Anything else goes row by row."""
        seen, taken = self._block_attempts(block)[rows], block.scalar("steps_taken")[rows]
        if block.irregular[rows].any():  # (after building the columns, which marks odd rows)
            return None
        if not (np.isfinite(seen).all() and np.isfinite(taken).all()):
            return None
        seen, taken = np.trunc(seen), np.trunc(taken)  # the record's int() of each
        if not (taken > 0).all():
            return None
        history = list(state.history)
        b_all = np.concatenate([np.array([b for b, _ in history], dtype=np.float64), seen])
        s_all = np.concatenate([np.array([s for _, s in history], dtype=np.float64), taken])
        if not (np.abs(b_all) < 2.0 ** 53).all() or not (np.abs(s_all) < 2.0 ** 53).all():
            return None
        at = np.arange(len(history), b_all.size)  # each row's place after its own append
        first = np.maximum(at - self.window, 0)  # the oldest pair the deque then holds
        d_seen, d_taken = b_all[at] - b_all[first], s_all[at] - s_all[first]
        judged = d_seen >= self.window
        with np.errstate(divide="ignore", invalid="ignore"):
            missing = np.maximum(0.0, 1.0 - d_taken / (d_seen / (self.accumulation or 1)))
        if (judged & ((d_taken <= 0) | (missing > self.max_fraction))).any():
            return None
        keep = self.window + 1
        for b, s in zip(seen[-keep:].tolist(), taken[-keep:].tolist()):
            state.history.append((int(b), int(s)))
        return []

    def _block_attempts(self, block: MetricBlock) -> np.ndarray:
        """`_attempts` of every row (NaN where the row has no ``batches_seen``)."""
        seen = block.scalar("batches_seen")
        if self.accumulation:
            return seen
        return np.where(np.isnan(seen), np.nan, np.trunc(block.scalar("step")) + 1)


@dataclass
class _OverflowState:
    flags: deque[bool] = field(default_factory=deque)
    hits: int = 0


class AmpOverflow(Detector):
    """The GradScaler found inf/NaN in more than ``max_fraction`` of the last ``window``
    steps (``amp.overflow``).

    A healthy scaler overflows about once per growth interval (2000 steps by default) when
    it probes a larger scale, plus a few times at the start while it calibrates; a fifth of
    50 steps is far beyond that.
    """

    codes = (Code("amp.overflow", Severity.WARNING,
                  meaning="The AMP gradient scaler found inf/NaN gradients in many recent steps.",
                  fix="Occasional overflow is normal; frequent overflow means fp16 cannot hold the "
                      "gradients: use bf16, scale the loss, or find the overflowing op."),)
    phases = frozenset({"after_step"})

    def __init__(self, window: int = 50, max_fraction: float = 0.2) -> None:
        self.window = check_int("window", window, 1)
        self.max_fraction = check_float("max_fraction", max_fraction, lo=0.0, hi=1.0)

    def new_state(self) -> _OverflowState:
        return _OverflowState(flags=deque(maxlen=self.window))

    def check(self, record: StepRecord, state: _OverflowState, live: LiveView | None) -> Sequence[HealthEvent]:
        amp = record.amp
        if record.kind != "step" or amp is None or amp.get("found_inf") is None:
            return NO_EVENTS
        hit = bool(amp["found_inf"])
        if len(state.flags) == self.window:
            state.hits -= state.flags[0]
        state.flags.append(hit)
        state.hits += hit
        if len(state.flags) < self.window or state.hits <= self.max_fraction * self.window:
            return NO_EVENTS
        return (self.event(
            "amp.overflow", record, where="grad_scaler",
            title=f"AMP overflow in {state.hits} of the last {self.window} steps",
            detail=(f"The gradient scaler found inf/NaN gradients and skipped {state.hits} of the last "
                    f"{self.window} steps; scale now {amp.get('scale')}."),
            evidence={"overflows": state.hits, "window": self.window,
                      "scale": math.nan if amp.get("scale") is None else amp["scale"]}),)

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    @property  # the window is a setting, so the memory is too
    def memory(self) -> int:  # type: ignore[override]
        """window: the state is the overflow flags of that many rows."""
        return self.window

    def screen(self, block: MetricBlock) -> np.ndarray | None:
        names, amp = block.mapping("amp")
        if "found_inf" not in amp:
            return None if names else np.zeros(block.n, dtype=bool)
        # by truth value, as ``check`` reads the flag ("0" is an overflow there); a row
        # without the flag is irregular, so looked at anyway
        hit = np.fromiter((type(a) is not dict or bool(a.get("found_inf", True)) for a in block.field("amp")),
                          dtype=bool, count=block.n)
        hit[: self.memory] = True
        return _spread(hit, self.memory)

    def check_block(self, block: MetricBlock, rows: np.ndarray, state: _OverflowState) -> BlockEvents | None:
        """No line reports AMP (and none is odd): every row leaves the window alone."""
        names, _ = block.mapping("amp")
        return [] if not names and not block.irregular[rows].any() else None


class AmpScaleCollapse(Detector):
    """The GradScaler's scale fell below ``min_scale`` (``amp.scale_collapse``, error).

    The scale starts at 2^16 and halves on every overflow; below 1 it no longer scales the
    loss up at all, which means gradients are non-finite even unscaled, a real NaN source
    rather than fp16 range. Immediate.
    """

    codes = (Code("amp.scale_collapse", Severity.ERROR,
                  meaning="The AMP gradient scaler's scale fell below its floor.",
                  fix="Gradients are non-finite even unscaled: the scaler keeps halving. Look for "
                      "a real NaN source; fp16 cannot represent these values."),)
    phases = frozenset({"after_step"})
    memory = 0

    def __init__(self, min_scale: float = 1.0) -> None:
        self.min_scale = check_float("min_scale", min_scale, lo=0.0, lo_open=True)

    def check(self, record: StepRecord, state: object, live: LiveView | None) -> Sequence[HealthEvent]:
        amp = record.amp
        scale = None if amp is None else amp.get("scale")
        if scale is None or not (scale < self.min_scale):
            return NO_EVENTS
        return (self.event(
            "amp.scale_collapse", record, where="grad_scaler",
            title=f"AMP loss scale collapsed to {scale:.3g}",
            detail=f"The GradScaler scale is {scale!r}, below min_scale={self.min_scale:g}.",
            evidence={"scale": scale, "min_scale": self.min_scale}),)

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        names, amp = block.mapping("amp")
        if "scale" not in amp:
            return None if names else np.zeros(block.n, dtype=bool)
        return ~(amp["scale"] >= self.min_scale)


def _spread(hit: np.ndarray, rows: int) -> np.ndarray:
    """``hit`` and the ``rows`` rows after each hit: where a windowed count can see it."""
    out = hit.copy()
    idx = np.flatnonzero(hit)
    for k in range(1, rows + 1):
        after = idx + k
        out[after[after < hit.size]] = True
    return out

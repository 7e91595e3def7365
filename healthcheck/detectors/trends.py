"""Trends over a window of steps: what no single step shows.

A gradient norm that doubles every few dozen steps, weights that shrink a little at every
step, updates too small to move the loss: each step is ordinary on its own, and checks
that compare a step with a running level that drifts along with it stay silent. These
checks keep a short window of the run and judge its shape, always together with the loss,
so a run that is learning (its loss well below where the window started) is left alone.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, Detector, LossSinceStart, check_float, check_int, finite, fmt, module_items


def total_norm(norms: Mapping[str, float]) -> float | None:
    """The whole model's norm: the logged "_total", else the modules' norms combined."""
    total = norms.get("_total")
    if finite(total):
        return total
    squares = [v * v for _, v in module_items(norms) if finite(v)]
    return math.sqrt(sum(squares)) if squares else None


def chunk_medians(values: Sequence[float], chunks: int) -> list[float]:
    size = len(values) // chunks
    return [statistics.median(values[i * size:(i + 1) * size]) for i in range(chunks)]


def loss_fell(losses: Sequence[float], by: float) -> bool:
    """True if the loss over the window's last fifth is at least ``by`` (a fraction) below
    its first fifth. Medians, so one odd batch decides nothing."""
    first, *_, last = chunk_medians(losses, 5)
    return last < (1.0 - by) * first if first > 0 else last < first


@dataclass
class _WindowState:
    values: deque[float] = field(default_factory=deque)
    losses: deque[float] = field(default_factory=deque)

    def take(self, record: StepRecord, norms: Mapping[str, float]) -> bool:
        """Add an applied step's total of ``norms`` and its loss; True once the window is
        full. A step without a finite, positive norm and a finite loss adds nothing."""
        if record.kind != "step" or record.skipped:
            return False
        norm, loss = total_norm(norms), record.loss
        if not finite(norm) or not finite(loss) or norm <= 0:
            return False
        self.values.append(norm)
        self.losses.append(loss)
        return len(self.values) == self.values.maxlen


class GradGrowth(Detector):
    """The gradient norm grows steadily, ``factor``× (10) over ``window`` steps
    (``grad.growing``).

    ``grad.exploding`` compares a step with a running level, which rises along with a
    slow climb; this one compares the window's last fifth with its first and asks that
    every fifth be above the one before (a trend, not a spike). A warning while the loss
    still falls (5 % over the window), an error when it does not: rising gradients with a
    flat or rising loss are the run going unstable (a learning rate too high for this
    stage, gradients that are never cleared).
    """

    codes = (Code("grad.growing", Severity.WARNING, Severity.ERROR,
                  meaning="The gradient norm grew steadily (10x or more over a window) with no single "
                          "jump; an error when the loss did not fall meanwhile.",
                  fix="The run is going unstable: lower the learning rate or add warm-up; check that "
                      "gradients are cleared before each backward (zero_grad) unless accumulation "
                      "is meant."),)
    phases = frozenset({"after_backward"})

    def __init__(self, factor: float = 10.0, window: int = 50) -> None:
        self.factor = check_float("factor", factor, lo=1.0, lo_open=True)
        self.window = check_int("window", window, 10)

    def new_state(self) -> _WindowState:
        return _WindowState(deque(maxlen=self.window), deque(maxlen=self.window))

    def check(self, record: StepRecord, state: _WindowState, live: LiveView | None) -> Sequence[HealthEvent]:
        if not state.take(record, record.grad_norm):
            return NO_EVENTS
        medians = chunk_medians(list(state.values), 5)
        growth = medians[-1] / medians[0]
        if growth < self.factor or any(b <= a for a, b in zip(medians, medians[1:])):
            return NO_EVENTS
        learning = loss_fell(list(state.losses), 0.05)
        return (self.event(
            "grad.growing", record, where="total", severity=Severity.WARNING if learning else Severity.ERROR,
            title=f"gradient norm grew {growth:.3g}x over {self.window} steps",
            detail=(f"The median gradient norm rose in every fifth of the last {self.window} steps, "
                    f"from {fmt(medians[0])} to {fmt(medians[-1])}, while the loss "
                    f"{'fell' if learning else 'did not fall'}."),
            evidence={"growth": growth, "first": medians[0], "last": medians[-1], "steps": self.window}),)


@dataclass
class _StallState:
    steps: int = 0
    peak_ratio: float = 0.0
    loss: LossSinceStart = field(default_factory=LossSinceStart)
    lrs: deque[float] = field(default_factory=deque)


class ProgressStall(Detector):
    """Updates far too small to learn, from the first step, and the loss has not fallen
    (``progress.stall``, error).

    A learning rate stuck at a floor (a schedule lambda replaced by a constant, a unit
    error) is not tiny in absolute terms and moves the weights just enough to pass the
    per-step bounds, yet nothing is learnt. The combination gives it away: after
    ``warmup`` (50) steps, no module's ‖Δθ‖/‖θ‖ ever reached ``low`` (1e-4; healthy runs
    sit around 1e-3), the loss is not ``min_drop`` (10 %) below its start, and the learning
    rate is not still rising (a warm-up from a small rate is given its time). A run that
    has converged has its loss far below its start and never looks like this.
    """

    codes = (Code("progress.stall", Severity.ERROR,
                  meaning="From the first step, updates stayed far below the healthy size (update/"
                          "weight ratio under 1e-4) and the loss did not fall.",
                  fix="The learning rate is stuck at a floor: check the schedule (a lambda that "
                      "returns a constant, a unit error) and the value each param group really gets."),)
    phases = frozenset({"after_step"})

    def __init__(self, low: float = 1e-4, warmup: int = 50, min_drop: float = 0.1) -> None:
        self.low = check_float("low", low, lo=0.0, lo_open=True)
        self.warmup = check_int("warmup", warmup, 10)
        self.min_drop = check_float("min_drop", min_drop, lo=0.0, hi=1.0)

    def new_state(self) -> _StallState:
        state = _StallState()
        state.lrs = deque(maxlen=self.warmup)
        return state

    def check(self, record: StepRecord, state: _StallState, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.kind != "step" or record.skipped or not finite(record.loss):
            return NO_EVENTS
        ratios = [u / w for m, u in module_items(record.update_norm)
                  if finite(u) and finite(w := record.param_norm.get(m)) and w > 0]
        if not ratios:
            return NO_EVENTS
        state.steps += 1
        state.peak_ratio = max(state.peak_ratio, max(ratios))
        state.loss.add(record.loss)
        state.lrs.append(max(record.lr) if record.lr else math.nan)
        if state.steps < self.warmup or state.peak_ratio >= self.low or self._warming_up(state):
            return NO_EVENTS
        if state.loss.fell(self.min_drop):
            return NO_EVENTS
        start, now = state.loss.start, state.loss.now
        return (self.event(
            "progress.stall", record, where="total",
            title=f"no progress: updates at most {state.peak_ratio:.2e} of the weights, loss {fmt(now)}",
            detail=(f"In {state.steps} steps no module's update/weight ratio reached {self.low:g} "
                    f"(largest {state.peak_ratio:.3g}; healthy runs move ~1e-3 per step) and the "
                    f"loss went from {fmt(start)} to {fmt(now)}; learning rates {record.lr}."),
            evidence={"peak_ratio": state.peak_ratio, "loss_start": start, "loss_now": now,
                      "steps": state.steps}),)

    @staticmethod
    def _warming_up(state: _StallState) -> bool:
        """The learning rate rose over the window: a warm-up is still under way."""
        lrs = [x for x in state.lrs if finite(x)]
        return len(lrs) >= 2 and lrs[-1] > 1.5 * lrs[0]


class DecayErosion(Detector):
    """The weights shrink step after step while the loss stalls or rises
    (``optim.decay_erosion``, error).

    Decoupled weight decay multiplies every decayed weight by (1 − lr × wd) per step; at
    lr × wd = 1e-2 on every parameter (norm layers and embeddings included) the model loses
    a third of its norm in 40 steps and stops learning, yet lr and wd are each ordinary.
    Fires when the whole model's ‖θ‖ fell by more than ``min_shrink`` (10 %) over
    ``window`` (50) steps, fell at nine steps in ten, and the loss over the window did not
    fall by ``min_drop`` (5 %). Healthy decay is a few 1e-5 per step: hundreds of times
    slower.
    """

    codes = (Code("optim.decay_erosion", Severity.ERROR,
                  meaning="The model's parameter norm fell step after step over a window while the loss "
                          "did not fall: weight decay erodes the weights faster than the gradients "
                          "rebuild them.",
                  fix="lr x weight decay is far too large for this run (healthy decay shrinks weights "
                      "by ~1e-5 a step): lower weight_decay, and keep norm layers, biases and "
                      "embeddings out of decay."),)
    phases = frozenset({"after_step"})

    def __init__(self, min_shrink: float = 0.1, window: int = 50, min_drop: float = 0.05) -> None:
        self.min_shrink = check_float("min_shrink", min_shrink, lo=0.0, hi=1.0, lo_open=True)
        self.window = check_int("window", window, 10)
        self.min_drop = check_float("min_drop", min_drop, lo=0.0, hi=1.0)

    def new_state(self) -> _WindowState:
        return _WindowState(deque(maxlen=self.window), deque(maxlen=self.window))

    def check(self, record: StepRecord, state: _WindowState, live: LiveView | None) -> Sequence[HealthEvent]:
        if not state.take(record, record.param_norm):
            return NO_EVENTS
        norms = list(state.values)
        shrink = 1.0 - norms[-1] / norms[0]
        falling = sum(b < a for a, b in zip(norms, norms[1:])) / (len(norms) - 1)
        if shrink < self.min_shrink or falling < 0.9 or loss_fell(list(state.losses), self.min_drop):
            return NO_EVENTS
        return (self.event(
            "optim.decay_erosion", record, where="total",
            title=f"weights eroding: ‖θ‖ fell {shrink:.0%} in {self.window} steps, loss not falling",
            detail=(f"The model's parameter norm went from {fmt(norms[0])} to {fmt(norms[-1])} over "
                    f"the last {self.window} steps, falling at {falling:.0%} of them, while the loss "
                    f"did not fall {self.min_drop:.0%}; learning rates {record.lr}."),
            evidence={"shrink": shrink, "norm_first": norms[0], "norm_last": norms[-1],
                      "falling_share": falling, "steps": self.window}),)

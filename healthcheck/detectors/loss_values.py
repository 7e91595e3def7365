"""Checks on the value of the loss: finite, not zero, moving, not running away.

A loss is the one number training optimises, so when it is mis-wired nothing else looks
wrong: the run goes on and the curve is just a curve. These checks follow the
back-propagated total step by step: a NaN in it or in a term, a total that is 0 while terms
are not, a total that never changes, one that climbs far above its best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, BlockEvents, Detector, DetectorState, check_float, check_int, finite, fmt
from .screens import any_value, not_finite
from .smoothing import ema_series

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.columns import MetricBlock


class NonFiniteLoss(Detector):
    """The total loss or a term is NaN/inf (``loss.nonfinite``, critical).

    DeepDiagnosis's "numerical errors" symptom and TheDeepChecker's on-training NaN check.
    Runs after backward, so the monitor can ask for a stop before ``optimizer.step()``
    writes NaN into the weights; and on eval records (``where`` then starts with "val/").
    Each non-finite term is named; the total is named only when no term is non-finite (a
    weight, not a term, is then the culprit, or no terms were logged to tell). No
    threshold: one non-finite value is enough.
    """

    codes = (Code("loss.nonfinite", Severity.CRITICAL,
                  meaning="The total loss or one of its terms is NaN or infinite.",
                  fix="Find the named term's inputs (log of 0, division by a zero norm, overflow); "
                      "lower the learning rate if the loss grew first; stop before the optimizer "
                      "step spreads NaN."),)
    phases = frozenset({"after_backward", "eval"})
    memory = 0

    def check(self, record: StepRecord, state: DetectorState, live: LiveView | None) -> Sequence[HealthEvent]:
        loss = record.loss
        bad_terms = [k for k, v in record.terms.items() if not math.isfinite(v)]
        if not bad_terms and (loss is None or math.isfinite(loss)):
            return NO_EVENTS
        prefix = "val/" if record.kind == "eval" else ""
        out = []
        for name in bad_terms:
            value = record.terms[name]
            out.append(self.event(
                "loss.nonfinite", record, where=prefix + name,
                title=f"loss term {name!r} is {value}",
                detail=(f"Term {name!r} = {value} (weight {fmt(record.weights.get(name))}), "
                        f"total loss = {fmt(loss)} at step {record.step}."),
                evidence={"term": value, "loss": math.nan if loss is None else loss}))
        if not bad_terms and record.terms:
            out.append(self.event(
                "loss.nonfinite", record, where=prefix + "total",
                title=f"total loss is {loss} while every term is finite",
                detail=("Every term is finite, so a weight or the way terms are combined "
                        f"made the total {loss}: weights = {record.weights}."),
                evidence={"loss": loss}))
        elif not bad_terms:  # no terms were logged: nothing is known about them
            out.append(self.event(
                "loss.nonfinite", record, where=prefix + "total",
                title=f"total loss is {loss}",
                detail=(f"The {'validation' if prefix else 'back-propagated'} loss is {loss} at step "
                        f"{record.step}; no loss terms were logged to say which part of it is. "
                        "Logging the terms (after_backward(loss, terms=...)) names the culprit."),
                evidence={"loss": loss}))
        return out

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        return not_finite(block.scalar("loss")) | any_value(block, "terms", not_finite)


class ZeroLoss(Detector):
    """The total is 0 (|loss| <= eps) while some weight is > 0 (``loss.zero``, error).

    eps defaults to 0.0, i.e. exactly zero: a float32 loss that is exactly 0 while a term
    has a positive weight almost always means the terms were never added (docs/failure-catalogue.md row 1);
    a loss that is merely tiny can be a perfect fit, so a positive eps is opt-in. Without
    weights in the record, fires only when the total is 0 while some term is not.
    """

    codes = (Code("loss.zero", Severity.ERROR,
                  meaning="The back-propagated total is zero (or below the threshold) while some "
                          "weight is > 0.",
                  fix="A weight that multiplies the main term is 0, a term is detached or never "
                      "added: print each term and its weight at step 0."),)
    phases = frozenset({"after_backward"})
    memory = 0

    def __init__(self, eps: float = 0.0) -> None:
        self.eps = check_float("eps", eps, lo=0.0)

    def check(self, record: StepRecord, state: DetectorState, live: LiveView | None) -> Sequence[HealthEvent]:
        loss = record.loss
        if loss is None or not math.isfinite(loss) or abs(loss) > self.eps:
            return NO_EVENTS
        positive = {k: w for k, w in record.weights.items() if finite(w) and w > 0}
        nonzero_terms = {k: v for k, v in record.terms.items() if finite(v) and v != 0}
        if record.weights and not positive:
            return NO_EVENTS  # every weight is 0: weights.primary_zero says so with more precision
        if not record.weights and not nonzero_terms:
            return NO_EVENTS  # nothing to contradict a genuine zero
        return (self.event(
            "loss.zero", record, where="total",
            title=f"total loss is {fmt(loss)} while {len(positive) or len(nonzero_terms)} "
                  f"term(s) should contribute",
            detail=(f"loss = {loss!r}; weights > 0: {positive or 'unknown'}; non-zero terms: "
                    f"{nonzero_terms or 'none'}. A zero total with positive weights means the "
                    "weighted terms never reached the back-propagated value."),
            evidence={"loss": loss, "positive_weights": len(positive),
                      "nonzero_terms": len(nonzero_terms)}),)

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        return np.abs(block.scalar("loss")) <= self.eps


@dataclass
class _ConstantState:
    ref: float = math.nan
    count: int = 0


def _known_outcome(state: _ConstantState, loss: float) -> None:
    """The state after a loss whose outcome needs no look back (see `ConstantLoss.check_block`)."""
    if math.isfinite(loss):
        state.ref, state.count = float(loss), 1
    else:
        state.count = 0


class ConstantLoss(Detector):
    """The training loss is unchanged (relative ``rtol``) for ``window`` steps (``loss.constant``).

    The extreme case of DeepDiagnosis's "loss not decreasing" symptom, and one that needs
    no threshold tuning. Mini-batches differ, so even a model whose weights never move
    shows a varying loss; a loss identical to 1e-7 over 20 batches means it no longer
    depends on parameters or data (a zero weight, a detached output, a batch that never
    changes). rtol=1e-7 is about one float32 ulp of relative change; 20 steps keep one
    repeated value from firing.
    """

    codes = (Code("loss.constant", Severity.WARNING,
                  meaning="The training loss has not changed (relative 1e-7) for a window of "
                          "steps.",
                  fix="The loss no longer depends on the parameters or the data: check that steps "
                      "are applied, the learning rate is > 0 and the batch actually changes."),)
    phases = frozenset({"after_step"})

    def __init__(self, window: int = 20, rtol: float = 1e-7) -> None:
        self.window = check_int("window", window, 2)
        self.rtol = check_float("rtol", rtol, lo=0.0)

    def new_state(self) -> _ConstantState:
        return _ConstantState()

    def check(self, record: StepRecord, state: _ConstantState, live: LiveView | None) -> Sequence[HealthEvent]:
        loss = record.loss
        if record.kind != "step" or loss is None or not math.isfinite(loss):
            state.count = 0
            return NO_EVENTS
        if self._one_step(state, loss) is None:
            return NO_EVENTS
        return (self._event(record, state, loss),)

    def _one_step(self, state: _ConstantState, loss: float) -> _ConstantState | None:
        """Advance by one finite loss; the state to report if the window is full."""
        if state.count and abs(loss - state.ref) <= self.rtol * abs(state.ref):
            state.count += 1
        else:
            state.ref, state.count = loss, 1
        return _ConstantState(state.ref, state.count) if state.count >= self.window else None

    def _event(self, record: StepRecord, state: _ConstantState, loss: float) -> HealthEvent:
        return self.event(
            "loss.constant", record, where="total",
            title=f"training loss stuck at {fmt(loss)} for {state.count} steps",
            detail=(f"The loss stayed within rtol={self.rtol:g} of {state.ref!r} for {state.count} "
                    "consecutive steps although every step sees a different batch."),
            evidence={"loss": loss, "steps": state.count})

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def check_block(self, block: MetricBlock, rows: np.ndarray, state: _ConstantState) -> BlockEvents | None:
        """The same comparisons over the block's loss column, stepping through only the
        rows whose outcome depends on the state.

        A finite loss more than 3 rtol away from the finite loss before it starts a new
        reference whatever the state was (that loss was within rtol of the reference, so
        for rtol up to 0.2 this one is 1.4 rtol away from it at least: room for rounding
        while rtol times the loss is a normal float), and a non-finite loss ends any run: both leave a state known
        without looking back. Only the rows after a close pair, or after a non-finite
        loss, and the first row, are stepped through, from the state the row before left.
        """
        losses = block.scalar("loss")[rows]  # built first: building it marks odd rows
        if block.irregular[rows].any():
            return None
        finite = np.isfinite(losses)
        known = ~finite  # rows that set the state on their own
        if self.rtol <= 0.2:  # what the margin needs (see above); else step through all
            with np.errstate(invalid="ignore", over="ignore"):
                tol = self.rtol * np.abs(losses[:-1])
                known[1:] |= finite[1:] & finite[:-1] & (np.abs(losses[1:] - losses[:-1]) > 3 * tol) & (
                    (tol > 1e-300) | (self.rtol == 0))
        known[0] = False
        out = []
        last = -1
        for i in np.flatnonzero(~known).tolist():
            if i - 1 > last:  # the row before set the state on its own
                _known_outcome(state, losses[i - 1])
            last = i
            loss = float(losses[i])
            if not math.isfinite(loss):
                state.count = 0
                continue
            if self._one_step(state, loss) is not None:
                row = int(rows[i])
                out.append((row, self._event(block.record(row), state, loss)))
        if last < losses.size - 1:
            _known_outcome(state, losses[-1])
        return out


@dataclass
class _DivergeState:
    n: int = 0
    ema: float = math.nan
    best: float = math.inf
    first: float = math.nan
    count: int = 0


class Divergence(Detector):
    """The smoothed loss exceeds ``factor`` × its best value (``loss.diverging``, error).

    The loss is smoothed (EMA, ``beta``=0.9 ≈ 10 steps) so one bad batch is not a
    divergence; after ``warmup`` steps, the smoothed loss above 10× its running minimum for
    ``patience`` steps fires (an order of magnitude: catalogue row 14, where 1e25 came
    before NaN). The reference is floored at ``floor`` × the first loss so a loss that
    fell to ~0 late in training is not judged by ratios of tiny numbers. Losses that can be
    <= 0 (log-likelihoods) make the ratio meaningless: the check then stays silent.
    """

    codes = (Code("loss.diverging", Severity.ERROR,
                  meaning="The smoothed training loss rose far above its best value so far.",
                  fix="Learning rate too high for this stage, or unstable numerics: lower the "
                      "learning rate, add warm-up or gradient clipping."),)
    phases = frozenset({"after_step"})

    def __init__(self, factor: float = 10.0, warmup: int = 20, patience: int = 3,
                 beta: float = 0.9, floor: float = 1e-3) -> None:
        self.factor = check_float("factor", factor, lo=1.0, lo_open=True)
        self.warmup = check_int("warmup", warmup, 0)
        self.patience = check_int("patience", patience, 1)
        self.beta = check_float("beta", beta, lo=0.0, hi=1.0)
        if self.beta >= 1.0:
            raise ValueError(f"beta must be < 1 or the average never moves, but got {beta=}")
        self.floor = check_float("floor", floor, lo=0.0)

    def new_state(self) -> _DivergeState:
        return _DivergeState()

    def check(self, record: StepRecord, state: _DivergeState, live: LiveView | None) -> Sequence[HealthEvent]:
        loss = record.loss
        if record.kind != "step" or loss is None or not math.isfinite(loss):
            return NO_EVENTS
        ref = self._advance(state, loss)
        if state.count < self.patience:
            return NO_EVENTS
        return (self._event(record, state, loss, ref),)

    def _advance(self, state: _DivergeState, loss: float) -> float:
        """One finite step loss into the state; returns the reference it was judged by."""
        state.n += 1
        if state.n == 1:
            state.ema = state.first = loss
        else:
            state.ema = self.beta * state.ema + (1.0 - self.beta) * loss
        ref = max(state.best, self.floor * state.first)
        diverging = (state.n > self.warmup and ref > 0 and state.first > 0
                     and state.ema > self.factor * ref)
        state.best = min(state.best, state.ema)
        state.count = state.count + 1 if diverging else 0
        return ref

    def _event(self, record: StepRecord, state: _DivergeState, loss: float, ref: float) -> HealthEvent:
        return self.event(
            "loss.diverging", record, where="total",
            title=f"loss diverging: smoothed {fmt(state.ema)} vs best {fmt(ref)}",
            detail=(f"The smoothed training loss {state.ema!r} has been above {self.factor:g}x its "
                    f"best value {ref!r} for {state.count} steps (latest batch loss {loss!r})."),
            evidence={"loss": loss, "smoothed": state.ema, "best": ref,
                      "ratio": state.ema / ref, "steps": state.count})

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def check_block(self, block: MetricBlock, rows: np.ndarray, state: _DivergeState) -> BlockEvents | None:
        """A block whose smoothed loss stays clear of the threshold only moves the average
        and the best value: advanced in numpy (the EMA agrees with the per-record path to
        a few ulps). Otherwise the same recursion row by row, without a record per row."""
        losses = block.scalar("loss")[rows]  # built first: building it marks odd rows
        if block.irregular[rows].any():
            return None
        if self._quiet_block(losses, state):
            return []
        out = []
        advance, patience, isfinite = self._advance, self.patience, math.isfinite
        for row, loss in zip(rows.tolist(), losses.tolist()):
            if not isfinite(loss):
                continue
            ref = advance(state, loss)
            if state.count >= patience:
                out.append((row, self._event(block.record(row), state, loss, ref)))
        return out

    def _quiet_block(self, losses: np.ndarray, state: _DivergeState) -> bool:
        """Advance ``state`` over ``losses`` and return True if no row comes near firing;
        leave it untouched and return False otherwise."""
        x = losses[np.isfinite(losses)]
        if x.size == 0:
            return True
        if state.n == 0:
            first = float(x[0])
            ema = ema_series(x, self.beta, None)
        else:
            first = state.first
            ema = ema_series(x, self.beta, state.ema)
        best_before = np.minimum.accumulate(np.concatenate([[state.best], ema[:-1]]))
        ref = np.maximum(best_before, self.floor * first)
        judged = np.arange(state.n + 1, state.n + x.size + 1) > self.warmup
        if first > 0 and (judged & (ref > 0) & (ema > self.factor * ref * (1 - 1e-9))).any():
            return False
        state.n += int(x.size)
        state.first, state.ema = first, float(ema[-1])
        state.best = float(min(best_before[-1], ema[-1]))
        state.count = 0
        return True

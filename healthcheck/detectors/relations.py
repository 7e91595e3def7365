"""Relations between logged quantities: the total that was back-propagated must be the
weighted sum of the terms the run says it is made of.

Every other loss check reads one number at a time. This one reads them together: a term
that enters the sum with the wrong sign, a term that is logged but left out of the sum, a
total scaled by something nobody declared all leave each number plausible on its own and
break only the relation between them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, Detector, check_float, check_int, fmt


@dataclass
class _MismatchState:
    streak: int = 0
    batches_seen: int | None = None  # the previous step's counter


class LossSumMismatch(Detector):
    """The back-propagated loss is not Σ weight × term (``loss.sum_mismatch``, error).

    Judged only on steps that declare a weight for every logged term (otherwise the sum is
    unknown, not wrong). A step that accumulated ``k`` batches may log the total divided by
    ``k`` (the usual ``loss / accumulation`` before ``backward``), so that is accepted too.
    The tolerance ``rtol`` (1 %) is relative to Σ|weight × term|: bf16 autocast keeps about
    three significant digits, so a healthy run stays well inside it, while a dropped or
    sign-flipped term moves the sum by that term's whole share. ``patience`` (2) steps in a
    row, so one step whose terms were logged from another micro-batch does not fire.
    """

    codes = (Code("loss.sum_mismatch", Severity.ERROR,
                  meaning="The back-propagated loss is not the weighted sum of the terms and weights "
                          "the run logged: a term with the wrong sign, a term left out, or a factor "
                          "nobody declared.",
                  fix="Compute the logged total from the same terms and weights that are "
                      "back-propagated, and log every term (with weight 0 if it is only a metric)."),)
    phases = frozenset({"after_backward"})

    def __init__(self, rtol: float = 0.01, atol: float = 1e-8, patience: int = 2) -> None:
        self.rtol = check_float("rtol", rtol, lo=0.0, lo_open=True)
        self.atol = check_float("atol", atol, lo=0.0)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _MismatchState:
        return _MismatchState()

    def check(self, record: StepRecord, state: _MismatchState, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.kind != "step":
            return NO_EVENTS
        accumulated = _batches(record, state.batches_seen)
        state.batches_seen = record.batches_seen
        if record.skipped:
            return NO_EVENTS
        parts = _weighted_parts(record)
        if parts is None:
            state.streak = 0
            return NO_EVENTS
        loss = record.loss
        assert loss is not None  # _weighted_parts returns None unless it is finite
        expected = sum(parts.values())
        scale = sum(abs(v) for v in parts.values())
        tolerance = self.rtol * scale + self.atol
        if any(abs(loss - expected / k) <= tolerance / k for k in {1, accumulated}):
            state.streak = 0
            return NO_EVENTS
        state.streak += 1
        if state.streak < self.patience:
            return NO_EVENTS
        return (self.event(
            "loss.sum_mismatch", record, where="total",
            title=f"loss {fmt(loss)} is not the weighted sum of its terms ({fmt(expected)})",
            detail=(f"Σ weight × term = {expected!r} but the back-propagated loss is {loss!r}, "
                    f"for {state.streak} steps; {_explain(loss, parts, tolerance)}"),
            evidence={"loss": loss, "weighted_sum": expected, "ratio": _ratio(loss, expected),
                      "steps": state.streak}),)


def _weighted_parts(record: StepRecord) -> dict[str, float] | None:
    """weight × term per term, or None when the record cannot be judged: no terms, a term
    without a declared weight, or a value that is not finite (that is another check's)."""
    terms, weights, loss = record.terms, record.weights, record.loss
    if not terms or loss is None or not math.isfinite(loss):
        return None
    parts = {}
    for name, value in terms.items():
        weight = weights.get(name)
        if weight is None or value is None or not (math.isfinite(value) and math.isfinite(weight)):
            return None
        parts[name] = weight * value
    return parts


def _batches(record: StepRecord, before: int | None) -> int:
    """How many batches this step accumulated: the growth of ``batches_seen`` since the
    step before, or for a run's first step, its count beyond the steps attempted."""
    if record.batches_seen is None:
        return 1
    if before is not None and before < record.batches_seen:
        return record.batches_seen - before
    return max(1, record.batches_seen - record.step)


def _ratio(loss: float, expected: float) -> float:
    return loss / expected if expected != 0 else math.inf


def _explain(loss: float, parts: dict[str, float], tolerance: float) -> str:
    """The simplest story that fits: one term left out, one term with the wrong sign, or a
    factor nobody declared."""
    total = sum(parts.values())
    for name, value in parts.items():
        if value != 0 and abs(loss - (total - value)) <= tolerance:
            return f"it matches the sum without {name!r}: that term is logged but not back-propagated."
        if value != 0 and abs(loss - (total - 2 * value)) <= tolerance:
            return f"it matches the sum with {name!r} subtracted: that term enters with the wrong sign."
    if total != 0 and loss != 0:
        return (f"the loss is {loss / total:.4g}x the sum: a factor is applied that no declared "
                "weight accounts for, or a term is missing from what was logged.")
    return "a term that was back-propagated is missing from what was logged, or the reverse."

"""Checks on the loss's named terms and their weights.

A mis-wired loss shows first in its parts: a zero weight on the main term, a term that is
always exactly 0, auxiliary terms that drown the primary one. These checks read each term
with its weight (``record.terms``, ``record.weights``).
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
from .base import NO_EVENTS, Detector, Streaks, check_float, check_int, finite, fmt
from .screens import any_value, same_primary

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.columns import MetricBlock


class DeadTerm(Detector):
    """A term with weight > 0 is exactly 0 for ``patience`` steps (``loss.dead_term``).

    Exactly 0, not small: a hinge or a masked term may legitimately hit 0 on a few batches,
    hence 10 consecutive steps before firing. Terms without a recorded weight are skipped.
    """

    codes = (Code("loss.dead_term", Severity.WARNING,
                  meaning="A loss term with a positive weight is exactly 0 step after step.",
                  fix="The term is computed on an empty selection, clamped, or never wired to the "
                      "model output; test it on a batch where it must be > 0."),)
    phases = frozenset({"after_backward"})
    memory = 1

    def __init__(self, patience: int = 10) -> None:
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> Streaks:
        return Streaks()

    def check(self, record: StepRecord, state: Streaks, live: LiveView | None) -> Sequence[HealthEvent]:
        out = []
        for name, value in record.terms.items():
            w = record.weights.get(name)
            n = state.bump(name, w is not None and finite(w) and w > 0 and value == 0.0)
            if n >= self.patience:
                out.append(self.event(
                    "loss.dead_term", record, where=name,
                    title=f"loss term {name!r} is exactly 0 for {n} steps (weight {fmt(w)})",
                    detail=(f"Term {name!r} has weight {w!r} but contributed exactly 0.0 to the "
                            f"loss on each of the last {n} steps: it carries no gradient."),
                    evidence={"weight": w, "steps": n}))
        return out or NO_EVENTS

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        return any_value(block, "terms", lambda t: t == 0.0)


@dataclass
class _ShareState:
    count: int = 0


class PrimaryShare(Detector):
    """The primary term's weighted share is below ``min_share`` (``loss.primary_share``).

    share = w_p·|t_p| / Σ w_i·|t_i| over terms with a weight. A zero-loss post-mortem expected the
    primary term to be 80-90 % of the total; 10 % is a floor far below any healthy mix,
    and 10 consecutive steps keep one odd batch from firing. Skipped when the primary
    weight is <= 0 (``weights.primary_zero`` reports that, critically).
    """

    codes = (Code("loss.primary_share", Severity.WARNING,
                  meaning="The primary term's weighted share of the total is below the threshold.",
                  fix="Auxiliary terms dominate the learning signal: lower their weights or raise "
                      "the primary weight; check the primary weight was passed where the loss is "
                      "built."),)
    phases = frozenset({"after_backward"})
    memory = 1

    def __init__(self, min_share: float = 0.1, patience: int = 10) -> None:
        self.min_share = check_float("min_share", min_share, lo=0.0, hi=1.0)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _ShareState:
        return _ShareState()

    def check(self, record: StepRecord, state: _ShareState, live: LiveView | None) -> Sequence[HealthEvent]:
        p = record.primary
        if p is None or p not in record.terms or p not in record.weights:
            return NO_EVENTS
        wp = record.weights[p]
        if not finite(wp) or wp <= 0:
            state.count = 0
            return NO_EVENTS
        parts = {}
        weights, isfinite = record.weights, math.isfinite  # a loop, not a comprehension: every step
        for k, v in record.terms.items():
            if k in weights and v is not None and isfinite(v):
                w = weights[k]
                if w is not None and isfinite(w):
                    parts[k] = w * abs(v)
        total = sum(parts.values())
        if total <= 0 or p not in parts:
            return NO_EVENTS
        share = parts[p] / total
        state.count = state.count + 1 if share < self.min_share else 0
        if state.count < self.patience:
            return NO_EVENTS
        top = max(parts, key=lambda t: parts[t])
        return (self.event(
            "loss.primary_share", record, where=p,
            title=f"primary term {p!r} is only {share:.1%} of the weighted loss",
            detail=("Weighted shares: " + ", ".join(f"{k}={v / total:.1%}" for k, v in parts.items())
                    + f". The largest is {top!r}; below {self.min_share:.0%} for {state.count} steps."),
            evidence={"share": share, "weight": wp, "term": record.terms[p], "steps": state.count}),)

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        # Rows that leave the count alone (no primary weight or term, nothing to share)
        # are flagged too: only a row that resets the count may be passed over.
        same, p = same_primary(block)
        t_names, terms = block.mapping("terms")
        w_names, weights = block.mapping("weights")
        if not same or p is None or p not in terms or p not in weights:
            return None
        wp = weights[p]
        total = np.zeros(block.n)
        for k in t_names:
            if k in weights:
                part = weights[k] * np.abs(terms[k])
                total += np.where(np.isfinite(terms[k]) & np.isfinite(weights[k]), part, 0.0)
        own = wp * np.abs(terms[p])
        with np.errstate(divide="ignore", invalid="ignore"):
            share = own / total
        judged = np.isfinite(wp) & (wp > 0)
        return judged & ~(np.isfinite(own) & (total > 0) & (share >= self.min_share * (1 + 1e-9)))

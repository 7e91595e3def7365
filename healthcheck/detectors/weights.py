"""Checks on the loss weights: the effective multiplier of each term at each step.

Weights are set in several places (defaults, a config file, HPO, a curriculum schedule),
and the last writer wins silently. One zero-loss failure was a primary weight that ended up 0;
another was a weight jumped mid-run by a curriculum, which made HPO compare trials on
different objectives. So: the primary weight is checked at every step, before the
optimizer step, and every change is recorded with its step and its source.
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
from .base import NO_EVENTS, Detector, DetectorState, check_float, fmt
from .screens import changed, same_primary

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.columns import MetricBlock


class PrimaryWeightZero(Detector):
    """The primary term's weight is <= 0, non-finite or missing (``weights.primary_zero``).

    Critical and without patience: with a zero primary weight every step optimises the
    auxiliary terms only, so the first step is already damage (docs/failure-catalogue.md row 1). Silent
    when the record names no primary term or carries no weights at all.
    """

    codes = (Code("weights.primary_zero", Severity.CRITICAL,
                  meaning="The primary loss term's effective weight is 0, negative, non-finite or "
                          "missing.",
                  fix="The weight was not passed where the loss is built, or a schedule/HPO "
                      "override set it to 0: set it explicitly and check its recorded source."),)
    phases = frozenset({"after_backward"})
    memory = 0

    def check(self, record: StepRecord, state: DetectorState, live: LiveView | None) -> Sequence[HealthEvent]:
        p = record.primary
        if p is None or not record.weights:
            return NO_EVENTS
        w = record.weights.get(p)
        if w is not None and math.isfinite(w) and w > 0:
            return NO_EVENTS
        source = record.weight_sources.get(p, "unknown")
        if w is None:
            title = f"primary term {p!r} has no weight"
            detail = f"The weights recorded are {record.weights}; none is for the primary term {p!r}."
            evidence = {}
        else:
            title = f"primary loss weight {p!r} = {w}"
            detail = (f"The primary term {p!r} is multiplied by {w!r} (set by: {source}), so it "
                      "contributes no learning signal; other weights: "
                      f"{ {k: v for k, v in record.weights.items() if k != p} }.")
            evidence = {"weight": w}
        return (self.event("weights.primary_zero", record, where=p, title=title, detail=detail,
                           evidence=evidence),)

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        same, p = same_primary(block)
        names, weights = block.mapping("weights")
        if not same:
            return None
        if p is None or not names:
            return np.zeros(block.n, dtype=bool)
        if p not in weights:
            return np.ones(block.n, dtype=bool)
        return ~(weights[p] > 0) | ~np.isfinite(weights[p])


@dataclass
class _PrevState:
    prev: dict[str, float] | None = None


class WeightChanged(Detector):
    """A weight differs from the previous record's (``weights.changed``, info).

    Every change is its own event (old, new, step and the source the record gives for the
    weight), never folded into a count: a curriculum jump must be visible where it
    happened. Changes within relative ``rtol`` are ignored (float round-trips). A weight
    ramped smoothly every step produces one event per step: silence the code or raise rtol.
    """

    codes = (Code("weights.changed", Severity.INFO,
                  meaning="A loss weight changed during the run (old and new value, step and "
                          "source recorded).",
                  fix="Expected for curricula and schedules; unexpected changes make trials "
                      "incomparable. Silence this code for smooth per-step schedules.",
                  repeats=True),)
    phases = frozenset({"after_backward"})
    memory = 1  # the state is the last row's weights

    def __init__(self, rtol: float = 1e-9) -> None:
        self.rtol = check_float("rtol", rtol, lo=0.0)

    def new_state(self) -> _PrevState:
        return _PrevState()

    def check(self, record: StepRecord, state: _PrevState, live: LiveView | None) -> Sequence[HealthEvent]:
        now = record.weights
        if not now:
            return NO_EVENTS
        prev = state.prev
        if prev == now:
            return NO_EVENTS
        state.prev = dict(now)  # a copy: the caller may reuse and mutate its dict
        if prev is None:
            return NO_EVENTS
        out = []
        for name in {**prev, **now}:
            old, new = prev.get(name, math.nan), now.get(name, math.nan)
            if _same(old, new, self.rtol):
                continue
            source = record.weight_sources.get(name, "unknown")
            out.append(self.event(
                "weights.changed", record, where=name,
                title=f"loss weight {name!r} changed {fmt(old)} → {fmt(new)} (source: {source})",
                detail=(f"Weight {name!r} was {old!r} and is {new!r} from step {record.step} "
                        f"(epoch {record.epoch}); set by: {source}."),
                evidence={"old": old, "new": new}))
        return out or NO_EVENTS

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        names, _ = block.mapping("weights")
        return changed(block, "weights") if names else np.zeros(block.n, dtype=bool)


def _same(a: float, b: float, rtol: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


@dataclass
class _SourcedState:
    weights: dict[str, float] | None = None
    sources: dict[str, str] | None = None


class UnplannedWeightChange(Detector):
    """A weight changed value while its recorded source did not (``weights.unplanned_change``).

    Every place that legitimately sets a weight (config, HPO, a schedule phase) records
    itself as the weight's source, and a run records the sources on every step. A value
    that changes while its source stays the same was changed by code nobody declared: the
    seed pipeline's curriculum that jumped a weight mid-run (catalogue row 11) made HPO
    rank trials on different objectives. A change that comes with a new source is planned
    and stays ``weights.changed`` (info). No patience: the first unowned change is the
    finding. Silent for terms without a recorded source (not measured).

    ``owned``: source prefixes whose owner changes the value on every step by design (a
    per-step ramp that keeps one source string); their changes are not judged.
    """

    codes = (Code("weights.unplanned_change", Severity.ERROR,
                  meaning="A loss weight changed value between steps while its recorded source did "
                          "not: no configured source owns the change.",
                  fix="Code set the weight directly (a curriculum in the loop, a callback, a stale "
                      "override): make the change through the run's weight plan or schedule so it "
                      "is recorded with its source, or remove it; trials with different objectives "
                      "are not comparable."),)
    phases = frozenset({"after_backward"})
    memory = 1  # the state is the last row's weights and sources

    def __init__(self, rtol: float = 1e-9, owned: Sequence[str] = ()) -> None:
        self.rtol = check_float("rtol", rtol, lo=0.0)
        if isinstance(owned, str) or not all(isinstance(o, str) and o for o in owned):
            raise ValueError(f"owned must be a sequence of non-empty source prefixes, but got {owned=}")
        self.owned = tuple(owned)

    def new_state(self) -> _SourcedState:
        return _SourcedState()

    def check(self, record: StepRecord, state: _SourcedState, live: LiveView | None) -> Sequence[HealthEvent]:
        now, sources = record.weights, record.weight_sources
        if not now or not sources:
            return NO_EVENTS
        prev, prev_sources = state.weights, state.sources
        if prev == now and prev_sources == sources:
            return NO_EVENTS
        state.weights, state.sources = dict(now), dict(sources)  # copies: the caller may reuse its dicts
        if prev is None or prev_sources is None:
            return NO_EVENTS
        out = []
        for name, new in now.items():
            old = prev.get(name)
            source, old_source = sources.get(name), prev_sources.get(name)
            if (old is None or source is None or source != old_source or _same(old, new, self.rtol)
                    or source.startswith(self.owned)):
                continue
            out.append(self.event(
                "weights.unplanned_change", record, where=name,
                title=f"loss weight {name!r} changed {fmt(old)} → {fmt(new)} with no new source",
                detail=(f"Weight {name!r} was {old!r} and is {new!r} from step {record.step} (epoch "
                        f"{record.epoch}), but its recorded source is still {source!r}: whatever "
                        "changed it did not record itself."),
                evidence={"old": old, "new": new}))
        return out or NO_EVENTS

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        names, _ = block.mapping("weights")
        sources = block.field("weight_sources")
        acting = [bool(s) for s in sources]
        if not names or not any(acting):
            return np.zeros(block.n, dtype=bool)
        if not all(acting):
            return None
        out = changed(block, "weights")
        out[1:] |= np.array([a != b for a, b in zip(sources[1:], sources)], dtype=bool)
        return out

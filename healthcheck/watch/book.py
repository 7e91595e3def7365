"""The event book: every health event of a run, from both sources, folded once.

`watch` hears of a finding twice when the run judged itself (health.jsonl) and its metrics
are judged again; the book keeps one entry per finding, so the verdict counts it once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..codes import CODES
from ..events import HealthEvent, Severity

MAX_EVENTS = 10_000  # distinct events kept; a per-step repeating code must not grow memory


@dataclass
class _Entry:
    event: HealthEvent  # the one shown: highest severity; the monitor's copy at a tie
    first_step: int | None
    last_step: int | None
    counts: dict[str, int]  # per source: both sources may count the same occurrences
    order: int


def _step_min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _step_max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


class EventBook:
    """Every health event of a run, from both sources, folded and de-duplicated.

    A finding repeated step after step is one entry per (code, where), as the monitor
    folds it: first and last step, a count, and the highest severity seen. The same
    finding from health.jsonl (judged in-process) and from re-judging the metrics is the
    same entry, counted once and shown as the monitor wrote it, since the monitor had the
    live model at hand. Codes registered with ``repeats`` keep one entry per step.
    """

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self._entries: dict[tuple, _Entry] = {}
        self.dropped = 0
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, event: HealthEvent) -> HealthEvent | None:
        """Record an event; returns it if it is news: a new finding or a higher severity."""
        info = CODES.get(event.code)
        key = (event.code, event.where, event.step) if info is not None and info.repeats \
            else (event.code, event.where)
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_events:
                self.dropped += 1
                return None
            self._entries[key] = _Entry(event, event.step, event.step, {event.source: event.count},
                                        next(self._order))
            return event
        entry.first_step = _step_min(entry.first_step, event.step)
        entry.last_step = _step_max(entry.last_step, event.step)
        entry.counts[event.source] = max(entry.counts.get(event.source, 0), event.count)
        shown = entry.event
        if event.severity > shown.severity or (
                event.severity == shown.severity and shown.source == "watch" != event.source):
            entry.event = event
            return event if event.severity > shown.severity else None
        return None

    def count(self, code: str, where: str | None, source: str, count: int, step: int | None) -> None:
        """Raise a finding's count (the monitor's final tally) without it being news."""
        entry = self._entries.get((code, where))
        if entry is not None:
            entry.counts[source] = max(entry.counts.get(source, 0), count)
            entry.last_step = _step_max(entry.last_step, step)

    def _sorted(self) -> list[_Entry]:
        return sorted(self._entries.values(),
                      key=lambda e: (-1 if e.first_step is None else e.first_step, e.order))

    def events(self) -> list[HealthEvent]:
        """One event per finding, at its first step, with its count."""
        return [e.event.with_(step=e.first_step, count=max(e.counts.values()))
                for e in self._sorted()]

    def dicts(self) -> list[dict]:
        out = []
        for e in self._sorted():
            d = e.event.to_dict()
            d["step"], d["count"] = e.first_step, max(e.counts.values())
            if e.last_step is not None and e.last_step != e.first_step:
                d["last_step"] = e.last_step
            out.append(d)
        return out

    def worst(self) -> Severity | None:
        return max((e.event.severity for e in self._entries.values()), default=None)

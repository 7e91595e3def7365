"""The monitor: runs detectors on records, folds repeats, applies the policy, fans out.

A training loop (or an adapter around one) calls ``observe(record, phase, live)`` at up
to four points:

* ``"after_backward"``: gradients exist, the optimizer has not stepped. Non-finite loss or
  gradients and a zero primary weight are judged here, so ``should_stop`` can be obeyed
  before ``optimizer.step()`` writes NaN into the weights.
* ``"after_step"``: the step was applied (or skipped); update norms are known. The record
  may be the same object as at after_backward, completed.
* ``"epoch"``: an epoch-mean record (kind "epoch").
* ``"eval"``: a validation record (kind "eval").

Then it reads ``monitor.should_stop`` (stop cleanly: checkpoint, final event, exit) and,
in HPO, ``monitor.should_prune`` (raise ``optuna.TrialPruned``). ``close()`` at the end
writes folded counts and a summary. ``observe_record`` runs the phases a record's kind
implies, for loops that only have finished records, and `judge_records` does that for a
whole metrics file with the detectors that need no live model.

The same finding repeated step after step is one event: the first occurrence is emitted
with count 1, later ones only raise its count, and it is emitted again only if its
severity rises; ``close()`` emits the final count of every folded finding. Codes whose
occurrences are each news (``weights.changed``) are never folded.

``observe`` is meant to run every step: it does no tensor work of its own (a `LiveView`
computes what detectors need lazily, once per phase) and allocates only when something
is found.
"""

from __future__ import annotations

import difflib
import traceback
import warnings
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .blocks.columns import MetricBlock
from .blocks.judging import judge_block
from .codes import CODES, Code, declare
from .detectors import PHASES, Detector, default_detectors
from .events import HealthEvent, Severity
from .live import LiveView
from .policy import CONTEXTS, Policy
from .record import StepRecord, as_record

_PHASES_OF_KIND = {"step": ("after_backward", "after_step"), "epoch": ("epoch",), "eval": ("eval",)}
_KEEP_EVENTS = 10_000  # emitted events kept in memory for inspection; counts are never capped
_NO_EVENTS: tuple[HealthEvent, ...] = ()

# what the monitor reports about itself (a detector that failed, the closing summary)
MONITOR_CODES = declare(
    Code("monitor.detector_failed", Severity.WARNING,
         meaning="A detector raised an exception and was switched off for the rest of the "
                 "run.",
         fix="A bug in that detector or an unexpected record shape; the traceback is in the "
             "detail."),
    Code("monitor.summary", Severity.INFO,
         meaning="Counts of every event of the run, written when the monitor closes.",
         fix="Nothing to fix: the closing summary.",
         repeats=True),
)


class _Slot:
    __slots__ = ("detector", "state", "every", "enabled")

    def __init__(self, detector: Detector, every: int) -> None:
        self.detector = detector
        self.state = detector.new_state()
        self.every = every
        self.enabled = True


@dataclass
class _Finding:
    top: HealthEvent  # the latest occurrence at the highest severity seen
    count: int = 1
    emitted_count: int = 1  # count carried by the last emitted copy


class Monitor:
    """Runs detectors, applies a `Policy`, and sends events to sinks.

    Args:
        detectors: detector instances; None → `default_detectors()`.
        policy: None → `Policy.from_env()`: the defaults, adjusted by HEALTHCHECK_POLICY (a
            policy file), HEALTHCHECK_SILENCE and HEALTHCHECK_REGRADE if set.
        sinks: objects with ``emit(event, action)`` and ``close()`` (see `sinks`).
        every: run detectors only on every n-th step (step phases) or epoch (epoch/eval
            phases); an int for all, or {detector name or code: n} with "*" for the rest.
            Patience counts of detectors then count checks, not steps; keep the
            non-finite checks at 1 so they can stop a step.
        context: "train", "hpo" or "gate"; the policy's defaults depend on it.
        source: stamped on every event ("monitor" in-process, "watch" when re-judged).
    """

    def __init__(self, detectors: Iterable[Detector] | None = None, policy: Policy | None = None,
                 sinks: Iterable[Any] = (), every: int | Mapping[str, int] = 1,
                 context: str = "train", source: str = "monitor") -> None:
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, but got {context=}")
        self.detectors = list(default_detectors() if detectors is None else detectors)
        for d in self.detectors:
            if not isinstance(d, Detector):
                raise TypeError(f"detectors must be Detector instances, but got {d!r}")
            bad = [p for p in d.phases if p not in PHASES]
            if bad:
                raise ValueError(f"{d.name}.phases has {bad}; valid phases: {', '.join(PHASES)}")
        self.policy = policy if policy is not None else Policy.from_env()
        self.sinks = list(sinks)
        self.context = context
        self.source = source
        intervals = _intervals(every, self.detectors)
        self._slots = [_Slot(d, n) for d, n in zip(self.detectors, intervals)]
        self._by_phase: dict[str, list[_Slot]] = {
            p: [s for s in self._slots if p in s.detector.phases] for p in PHASES}
        self._plan()
        self._findings: dict[tuple[str, str | None], _Finding] = {}
        self._repeats: list[HealthEvent] = []
        self.events: deque[HealthEvent] = deque(maxlen=_KEEP_EVENTS)
        self._occurrences: Counter[Any] = Counter()
        self._silenced: Counter[Any] = Counter()
        self._failed_sinks: set[int] = set()
        self.should_stop = False
        self.stop_reason: HealthEvent | None = None
        self.should_prune = False
        self.prune_reason: HealthEvent | None = None
        self.closed = False

    def add_detectors(self, detectors: Iterable[Detector], every: int = 1) -> None:
        """Add detectors whose settings are known only once the run is (value ranges that
        depend on the model's size, read from the trainer at fit start). Each starts with
        fresh state and judges from the next observation on; ``every`` as in the
        constructor, as one int for the detectors added."""
        added = list(detectors)
        for d in added:
            if not isinstance(d, Detector):
                raise TypeError(f"detectors must be Detector instances, but got {d!r}")
            bad = [p for p in d.phases if p not in PHASES]
            if bad:
                raise ValueError(f"{d.name}.phases has {bad}; valid phases: {', '.join(PHASES)}")
        for d, n in zip(added, _intervals(every, added)):
            slot = _Slot(d, n)
            self.detectors.append(d)
            self._slots.append(slot)
            for p in d.phases:
                self._by_phase[p].append(slot)
        self._plan()

    # -- the hot path -----------------------------------------------------------------
    def _plan(self) -> None:
        """Per phase, what each enabled detector needs at every call, looked up once:
        a metrics file is judged at up to 1M records per scan, and a live run pays this
        at every step, so the loop in `_run` reads no attributes."""
        self._runs: dict[str, tuple[tuple[_Slot, Any, Any, int, bool], ...]] = {
            p: tuple((s, s.detector.check, s.state, s.every, s.detector.needs_live)
                     for s in slots if s.enabled)
            for p, slots in self._by_phase.items()}
        # each slot's place in each phase: the order of events found on one row
        self._ranks = {p: {id(run[0]): r for r, run in enumerate(runs)} for p, runs in self._runs.items()}

    def observe(self, record: StepRecord | Mapping[str, Any], phase: str,
                live: LiveView | None = None) -> Sequence[HealthEvent]:
        """Run the detectors of ``phase`` on ``record``; returns the events emitted now."""
        if phase not in self._runs:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, but got {phase=}")
        if self.closed:
            raise RuntimeError("observe() after close(): the monitor has written its summary")
        if not isinstance(record, StepRecord):
            record = as_record(record)
        return self._run(record, phase, live)

    def _run(self, record: StepRecord, phase: str, live: LiveView | None) -> Sequence[HealthEvent]:
        tick = record.step if phase in ("after_backward", "after_step") else record.epoch
        if live is not None:
            live.begin(phase, record.step)
        emitted: list[HealthEvent] | None = None
        for slot, check, state, every, needs_live in self._runs[phase]:
            if every > 1 and tick % every:
                continue
            if needs_live and live is None:
                continue
            try:
                found = check(record, state, live)
            except Exception as err:  # a broken detector must not break training
                slot.enabled = False
                self._plan()  # this loop goes on over the old plan; later calls skip it
                found = (self._detector_failed(slot.detector, record, err),)
            if found is _NO_EVENTS:  # the empty tuple is a singleton: most calls end here
                continue
            for event in found:
                out = self._handle(event)
                if out is not None:
                    if emitted is None:
                        emitted = []
                    emitted.append(out)
        return emitted if emitted is not None else ()

    def observe_record(self, record: StepRecord | Mapping[str, Any],
                       live: LiveView | None = None) -> list[HealthEvent]:
        """Run every phase the record's kind implies (step: after_backward, after_step)."""
        if not isinstance(record, StepRecord):
            record = as_record(record)
        if self.closed:
            raise RuntimeError("observe() after close(): the monitor has written its summary")
        phases = _PHASES_OF_KIND[record.kind]
        if len(phases) == 2:  # a step: both of its phases, the common case, unrolled
            first = self._run(record, phases[0], live)
            second = self._run(record, phases[1], live)
            return [*first, *second] if first or second else []
        return list(self._run(record, phases[0], live))

    def observe_block(self, block: MetricBlock) -> list[HealthEvent]:
        """Judge consecutive metrics lines at once (offline: no live view): the same
        events in the same order as `observe_record` on each line (`blocks.judge_block`)."""
        return judge_block(self, block)

    # -- what block judging (`blocks.judge_block`) reads and calls ----------------------
    def phase_plan(self, phase: str) -> tuple[tuple[_Slot, Any, Any, int, bool], ...]:
        """The enabled detectors of ``phase``, in order: (slot, check, state, every, needs_live)."""
        return self._runs[phase]

    @property
    def phase_ranks(self) -> dict[str, dict[int, int]]:
        """Per phase, each enabled slot's place (by id): the order of events found on one row.
        The current plan's; a slot switched off later keeps its place in this one."""
        return self._ranks

    def switch_off(self, slot: _Slot, record: StepRecord, err: Exception) -> HealthEvent:
        """Switch off the detector of ``slot``, which raised ``err`` on ``record``; returns
        the event that says so. Calls under way go on over the old plan."""
        slot.enabled = False
        self._plan()
        return self._detector_failed(slot.detector, record, err)

    def emit(self, event: HealthEvent) -> HealthEvent | None:
        """Push an event found elsewhere (a preflight check, an adapter) through the same
        policy, folding and sinks. Returns it as emitted, or None if folded or silenced."""
        return self._handle(event)

    # -- folding, policy, fan-out -------------------------------------------------------
    def _handle(self, event: HealthEvent) -> HealthEvent | None:
        severity, action = self.policy.decide(event.code, event.severity, self.context)
        if severity is None:
            self._silenced[event.code] += 1
            return None
        if severity != event.severity or event.source != self.source:
            event = event.with_(severity=severity, source=self.source)
        self._occurrences[(event.severity, event.code)] += 1
        info = CODES.get(event.code)
        if info is not None and info.repeats:
            self._repeats.append(event)
        else:
            key = (event.code, event.where)
            f = self._findings.get(key)
            if f is None:
                self._findings[key] = _Finding(top=event)
            else:
                f.count += 1
                rises = event.severity > f.top.severity
                if event.severity >= f.top.severity:
                    f.top = event
                if not rises:
                    return None
                f.emitted_count = f.count
                event = event.with_(count=f.count)
        self._send(event, action)
        if action in ("stop", "prune") and not self.should_stop:
            self.should_stop = True
            self.stop_reason = event
        if action == "prune" and not self.should_prune:
            self.should_prune = True
            self.prune_reason = event
        return event

    def _send(self, event: HealthEvent, action: str) -> None:
        self.events.append(event)
        for i, sink in enumerate(self.sinks):
            try:
                sink.emit(event, action)
            except Exception as err:  # a sink failing (disk full, network) must not stop training
                if i not in self._failed_sinks:
                    self._failed_sinks.add(i)
                    warnings.warn(f"health sink {type(sink).__name__} failed: {err!r}; "
                                  "further failures of this sink are not reported", RuntimeWarning, stacklevel=2)

    def _detector_failed(self, det: Detector, record: StepRecord, err: Exception) -> HealthEvent:
        tb = "".join(traceback.format_exception_only(type(err), err)).strip()
        return det.event("monitor.detector_failed", record, where=det.name,
                         title=f"detector {det.name} failed and was switched off",
                         detail=f"{tb}\n{''.join(traceback.format_tb(err.__traceback__)[-3:])}")

    # -- results ------------------------------------------------------------------------
    @property
    def stop_message(self) -> str | None:
        """The stop reason as one sentence, for logs and exceptions."""
        return None if self.stop_reason is None else self.stop_reason.line()

    def findings(self) -> list[HealthEvent]:
        """One event per (code, where) with its final count and highest severity, in order of
        first occurrence, then every never-folded event in order."""
        out = [f.top.with_(count=f.count) for f in self._findings.values()]
        out.extend(self._repeats)
        return out

    def summary(self) -> dict[str, Any]:
        """Counts of every occurrence (folded ones included) per severity and per code."""
        by_sev: Counter[Any] = Counter()
        by_code: Counter[Any] = Counter()
        for (sev, code), n in self._occurrences.items():
            by_sev[str(sev)] += n
            by_code[code] += n
        return {
            "events": sum(by_code.values()),
            "by_severity": {str(s): by_sev.get(str(s), 0) for s in Severity},
            "by_code": dict(sorted(by_code.items())),
            "silenced": dict(self._silenced),
            "stopped": self.should_stop,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.code,
            "pruned": self.should_prune,
        }

    def close(self) -> dict[str, Any]:
        """Emit the final count of every folded finding and a summary event, close sinks.
        Idempotent; returns `summary()`."""
        if self.closed:
            return self.summary()
        for f in self._findings.values():
            if f.count > f.emitted_count:
                _, action = self.policy.decide(f.top.code, f.top.severity, self.context)
                self._send(f.top.with_(count=f.count),
                           "record" if action in ("stop", "prune") else action)
        summary = self.summary()
        last = self.events[-1] if self.events else None
        counts = ", ".join(f"{n} {s}" for s, n in summary["by_severity"].items() if n)
        self._send(HealthEvent(
            code="monitor.summary", severity=Severity.INFO, source=self.source,
            step=None if last is None else last.step, epoch=None if last is None else last.epoch,
            title=f"{summary['events']} health event(s): {counts}" if counts else "no health events",
            detail=", ".join(f"{c}×{n}" for c, n in summary["by_code"].items()),
            evidence=summary["by_severity"]), "record")
        self.closed = True
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:
                warnings.warn(
                    f"health sink {type(sink).__name__} failed to close: {err!r}", RuntimeWarning, stacklevel=2
                )
        return summary

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _intervals(every: int | Mapping[str, int], detectors: Sequence[Detector]) -> list[int]:
    def _n(key: str, n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"every must be an integer >= 1, but got every[{key!r}]={n!r}")
        return n

    if not isinstance(every, Mapping):
        return [_n("*", every)] * len(detectors)
    names = {d.name for d in detectors} | {c for d in detectors for c in d.codes} | {"*"}
    for key in every:
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"every: {key!r} names no detector or code in use{hint}")
    default = _n("*", every.get("*", 1))
    out = []
    for d in detectors:
        n = every.get(d.name)
        if n is None:
            n = next((every[c] for c in d.codes if c in every), default)
        out.append(_n(d.name, n))
    return out


def judge_records(
    records: Iterable[StepRecord | Mapping[str, Any]],
    detectors: Iterable[Detector] | None = None,
    policy: Policy | None = None,
    context: str = "train",
) -> list[HealthEvent]:
    """Judge finished records (e.g. a metrics.jsonl) with the detectors that need no live
    model; returns one event per finding with its final count (source "watch")."""
    chosen = [d for d in (default_detectors() if detectors is None else detectors) if not d.needs_live]
    monitor = Monitor(chosen, policy, context=context, source="watch")
    for record in records:
        monitor.observe_record(record)
    return monitor.findings()

"""Judging a block of metrics lines with a monitor's detectors, as line by line would.

A long metrics file is judged a block of consecutive lines at a time: a detector with a
`Detector.screen` runs ``check`` only on the rows the screen names and on the rows before
them that rebuild its state (`Detector.memory`, see `rows.rows_to_check`); one with a
`Detector.check_block` judges the block itself; the rest see every row. The events come
out in the order judging each line on its own gives (row, phase, detector), and go
through the monitor's policy and folding like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..detectors import PHASES
from ..events import HealthEvent
from ..record import StepRecord
from .columns import KIND_CODES, KIND_NAMES, MetricBlock
from .rows import rows_to_check

if TYPE_CHECKING:
    from ..monitor import Monitor

_KIND_CODE_OF_PHASE = {"after_backward": KIND_CODES["step"], "after_step": KIND_CODES["step"],
                       "epoch": KIND_CODES["epoch"], "eval": KIND_CODES["eval"]}
_PHASE_RANK = {p: i for i, p in enumerate(PHASES)}


def judge_block(monitor: Monitor, block: MetricBlock) -> list[HealthEvent]:
    """Judge consecutive metrics lines at once (offline: no live view); returns the
    events emitted, the same and in the same order as `Monitor.observe_record` on each
    line."""
    if monitor.closed:
        raise RuntimeError("observe() after close(): the monitor has written its summary")
    found: list[tuple[int, int, int, HealthEvent]] = []
    own_rows: dict[tuple[Any, ...], tuple[np.ndarray, MetricBlock]] = {}
    ranks = monitor.phase_ranks  # the plan's ranks now: a detector switched off below keeps its rank
    done: set[int] = set()  # detectors judged over the rows of all their phases at once
    for phase in PHASES:
        for slot, check, state, every, needs_live in monitor.phase_plan(phase):
            if needs_live or id(slot) in done:
                continue
            # A detector judging lines of several kinds (epoch and eval, say) may carry
            # what one kind tells to the next: it sees all its rows in file order. Not
            # one with a screen: its "rows before" rebuild state of the kind they are.
            phases = _ordered_phases(slot.detector.phases)
            kinds = tuple(_KIND_CODE_OF_PHASE[p] for p in phases)
            if len(set(kinds)) != len(kinds) or slot.detector.memory is not None:
                phases, kinds = (phase,), (_KIND_CODE_OF_PHASE[phase],)
            if len(phases) > 1:
                done.add(id(slot))
            key = (kinds, every)
            if key not in own_rows:
                rows = np.zeros(block.n, dtype=bool)
                for p, kind in zip(phases, kinds):
                    in_phase = block.kind == kind
                    if every > 1:
                        tick_field = "step" if p in ("after_backward", "after_step") else "epoch"
                        in_phase &= (block.ticks(tick_field) % every == 0).astype(bool)
                    rows |= in_phase
                idx = np.flatnonzero(rows)
                # a detector's screen sees only the rows it judges: "the row before" and
                # "the next n rows" are then its rows, not lines of other kinds between them
                own_rows[key] = (idx, block if idx.size == block.n else block.take(idx))
            idx, own = own_rows[key]
            if not idx.size:
                continue
            judged = _judge_rows(monitor, slot, check, state, own, np.arange(idx.size))
            phase_of_kind = dict(zip(kinds, phases))
            for row, event in judged:
                at = row if own is block else int(idx[row])
                p = phase_of_kind[int(block.kind[at])]
                found.append((at, _PHASE_RANK[p], ranks[p][id(slot)], event))
    found.sort(key=lambda f: f[:3])
    emitted = []
    for *_, event in found:
        out = monitor.emit(event)
        if out is not None:
            emitted.append(out)
    return emitted


def _judge_rows(monitor: Monitor, slot: Any, check: Any, state: Any, block: MetricBlock,
                idx: np.ndarray) -> list[tuple[int, HealthEvent]]:
    det = slot.detector
    try:
        judged = det.check_block(block, idx, state)
    except Exception as err:  # a broken detector must not break judging
        return _failed_on_block(monitor, slot, block, int(idx[0]), err)
    if judged is not None:
        return judged
    out: list[tuple[int, HealthEvent]] = []
    rows, flagged = rows_to_check(det, block, idx)
    for row, counts in zip(rows.tolist(), flagged.tolist()):
        try:
            events = check(block.record(row), state, None)
        except Exception as err:
            return out + _failed_on_block(monitor, slot, block, row, err)
        if counts:  # a row replayed only to rebuild the state speaks for nothing
            out.extend((row, e) for e in events)
    return out


def _failed_on_block(monitor: Monitor, slot: Any, block: MetricBlock, row: int,
                     err: Exception) -> list[tuple[int, HealthEvent]]:
    try:
        record = block.record(row)
    except Exception:  # the row itself is what failed: say so at its step
        ticks = block.ticks("step")
        record = StepRecord(kind=KIND_NAMES.get(int(block.kind[row]), "step"),
                            step=int(ticks[row]) if ticks.dtype != object else 0)
    # judge_block goes on over the old plan; this detector's rows are done
    return [(row, monitor.switch_off(slot, record, err))]


def _ordered_phases(phases: frozenset[str]) -> tuple[str, ...]:
    return tuple(p for p in PHASES if p in phases)

"""`RunWatch`: everything `healthcheck watch` knows about one run dir, advanced by polls.

The training process may judge itself (its monitor writes health.jsonl), but it may also
be a loop that only logs metrics, an old run, or one whose monitor was switched off. So
`watch` re-runs every detector that needs no live model (those with ``needs_live``
False) on the metrics it reads, merges the result with health.jsonl, and reports one
verdict. Reading is incremental (`watch.reading`), so following a run costs one `stat` per
file per poll, and catching up on a long run streams through it in flat memory.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ..blocks.columns import MetricBlock
from ..blocks.typed import StructBlock
from ..codes import CODES, Code, declare
from ..events import HealthEvent, Severity
from ..monitor import Monitor
from ..policy import Policy
from ..record import KINDS, RESUME, StepRecord
from .book import EventBook
from .reading import (
    BadLine,
    KeyMap,
    LineLayout,
    MetricsTail,
    NumberedItems,
    RunLogError,
    StructRows,
    csv_logs,
    detect_format,
    numbered_batches,
    open_health,
    open_metrics,
)
from .reading.resume import superseded_lines
from .state import RunState

BAD_LINE = declare(
    Code("watch.bad_line", Severity.WARNING,
         meaning="A line of a run's metrics or health log is not a JSON object (or not a "
                 "valid row); it was skipped.",
         fix="Something other than the training loop wrote to the file, or two writers "
             "interleaved their lines: give each process its own run dir.",
         repeats=True),
)[0]

# What a run's files must show before its verdict means anything (`RunWatch.conclude`).
NO_STEPS, ENDED_EARLY = declare(
    Code("watch.no_steps", Severity.ERROR,
         meaning="The run's files hold no optimizer step (no step line, or no line at all): "
                 "nothing was trained, so nothing can be judged healthy.",
         fix="The process died before its first step (its own log says why), or its "
             "metrics go elsewhere: point watch at the dir they are written to, or name "
             "the format and columns (--format, --loss-key)."),
    Code("watch.ended_early", Severity.WARNING,
         meaning="The run's monitor started a health log but never wrote its closing "
                 "summary, and the run is not being followed: it ended early. The event "
                 "says how its last line ended: clean stop (a complete line), crash (a torn "
                 "line, or a run.crashed event) or unknown (no line to tell by).",
         fix="If it crashed, its own log says why; if it is still running, follow it "
             "(--follow). --fail-on warning makes this fail the check."),
)
END_CODE = "monitor.summary"  # the monitor writes it when it closes: the run has ended
CRASH_CODE = "run.crashed"  # what a loop's monitor records for an exception that ended it
BLOCK_LINES = 8_192  # lines judged per poll slice (one block), so a catching-up view still redraws


# what reading a malformed row as a record raises: it is a bad line, not a crash
ROW_ERRORS = (TypeError, ValueError, AttributeError, OverflowError, KeyError, RecursionError)


def _snippet(line: Any) -> str:
    try:
        return json.dumps(line, default=str)[:80]
    except (ValueError, TypeError, RecursionError):
        return repr(line)[:80]


# ----------------------------------------------------------------------------- judging
def stream_detectors(detectors: Iterable[Any] | None = None) -> list[Any]:
    """The detectors that can judge a metrics file: those that need no live model."""
    if detectors is None:
        from ..detectors import default_detectors

        detectors = default_detectors()
    return [d for d in detectors if not getattr(d, "needs_live", False)]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while blocks of parsed lines are alive: JSON objects
    cannot form cycles, yet thousands of live dicts make every collection walk them all
    (about a third of a long scan: 300 k lines took 3.8 s with it, 2.55 s without).
    Reference counting still frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def numbered_reads(tail: Any, layout: LineLayout | None,
                   position: Callable[[], int]) -> Iterator[NumberedItems | StructRows]:
    """A metrics reader's items a read at a time (`poll_many`, typed where the layout
    fits), or in small lists for a reader that hands them out one by one; each list
    knows the line of the file each item came from (`line_nos`). A reader that counts no
    lines (TensorBoard) numbers its items by ``position``: their place in the whole stream."""
    many = getattr(tail, "poll_many", None)
    if many is not None:
        yield from many(layout)
        return
    line_no = (lambda: tail.line_no) if hasattr(tail, "line_no") else position
    yield from numbered_batches(tail.poll(), line_no, 1024)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _may_hold_marker(items: NumberedItems) -> bool:
    return any(type(item) is dict and item.get("kind") == RESUME for item in items)


def _last_step(items: NumberedItems) -> float | None:
    for item in reversed(items):
        if type(item) is dict and item.get("kind", "step") in KINDS:
            step = _number(item.get("step"))
            if step is not None:
                return step
    return None


def _row_step(rows: StructRows, i: int) -> float | None:
    row = rows[i]
    spec = rows.shapes[type(row)].fields.get("step")
    return None if spec is None else _number(getattr(row, spec.attr, None))


# ------------------------------------------------------------------------- the watcher
class RunWatch:
    """Everything `watch` knows about one run dir, advanced by `poll()`.

    The run dir and its metrics file may not exist yet (``--follow`` before training
    starts): polls then find nothing until they do. With ``fmt="auto"`` the format is
    detected once a metrics file of some kind appears. ``typed=False`` parses every
    metrics.jsonl line as a dict instead of decoding regular lines into typed rows
    (`reading.LineLayout`): the same verdict, slower; a baseline for the benchmark.
    """

    def __init__(self, run_dir: str | os.PathLike, *, fmt: str = "auto", keys: KeyMap | None = None,
                 detectors: Iterable[Any] | None = None, history: int = 60,
                 policy: Policy | None = None,
                 on_line: Callable[[Mapping[str, Any]], None] | None = None,
                 typed: bool = True) -> None:
        self.run_dir = os.fspath(run_dir)
        self.fmt = fmt
        self.keys = keys or KeyMap()
        self.state = RunState(name=os.path.basename(os.path.abspath(self.run_dir)), history=history)
        self.book = EventBook()
        # The in-process monitor's own folding and policy, with source "watch": a finding
        # reads the same whether the run judged itself or watch re-judged its metrics.
        self.policy = policy if policy is not None else Policy.from_env()
        self.monitor = Monitor(stream_detectors(detectors), self.policy, source="watch")
        self.ended = False  # the monitor wrote its closing summary
        self.crashed = False  # the health log records an exception that ended the run
        self.concluded = False  # `conclude` has judged what the files as a whole show
        self._on_line = on_line
        self._metrics: MetricsTail | None = None
        self._health = open_health(self.run_dir)
        self._pending: Iterator | None = None
        # the shapes of this run's lines, learned as they are read (typed=False: dicts only)
        self._layout = LineLayout() if typed else None
        self._superseded: frozenset[int] = frozenset()  # lines a resume marker replaces
        self._through = -math.inf  # the highest step let through to judging so far
        self._replay: tuple[float, float] | None = None  # steps a marker met while following replays
        self._layout_in_use: LineLayout | None = None  # the layout of the reads under way
        self.superseded = 0  # how many of them were read
        self._carry: NumberedItems | StructRows | None = None  # lines read but left for the next poll (max_lines)
        self._position = itertools.count(1).__next__  # numbers the items of a reader without lines, across polls
        self.new_events: list[HealthEvent] = []  # news since the caller last cleared it

    @property
    def format(self) -> str | None:
        return None if self._metrics is None else self._resolved

    @property
    def catching_up(self) -> bool:
        """The last `poll(max_lines=…)` stopped before the end of what is there."""
        return self._pending is not None or bool(self._carry)

    @property
    def columns(self) -> list[str]:
        """The column (CSV) or tag (TensorBoard) names seen so far."""
        m = self._metrics
        return list(getattr(m, "header", None) or sorted(getattr(m, "tags", None) or ()))

    @property
    def picked_log(self) -> str | None:
        """A sentence naming the metrics.csv read when the run dir holds CSVLogger's
        folders rather than the file itself (the newest of them); None otherwise."""
        path = getattr(self._metrics, "path", None)
        if self.format != "csv" or path is None or os.path.dirname(path) == self.run_dir.rstrip(os.sep):
            return None
        logs = csv_logs(self.run_dir)
        others = f", the newest of {len(logs)}" if len(logs) > 1 else ""
        return f"reading {os.path.relpath(path, self.run_dir)} below {self.run_dir}{others}"

    @property
    def missing_keys(self) -> list[str]:
        """Column names the user gave (--loss-key …) that the CSV log does not have."""
        return list(getattr(self._metrics, "missing_keys", None) or [])

    def _open(self) -> bool:
        if self._metrics is not None:
            return True
        if not os.path.isdir(self.run_dir):
            return False
        try:
            fmt = detect_format(self.run_dir) if self.fmt == "auto" else self.fmt
            self._metrics = open_metrics(self.run_dir, fmt, self.keys)
        except RunLogError:
            return False  # nothing written yet; `check_readable` decides if that is an error
        self._resolved = fmt
        if fmt == "jsonl":
            self._superseded = superseded_lines(self._metrics.path)
            if self._superseded:
                self._layout = None  # dict rows, which are dropped one by one below
        return True

    def _resumed(self, items: Any) -> Any:
        """``items`` less the lines the resumed timeline drops (docs/run-dir.md): those are
        read (and counted) but neither judged nor shown.

        Markers the file held at open are known by line (``_superseded``). A marker that
        arrives while following (the run was resumed under ``--follow``) cannot take back
        the lines already judged, so from it on the watcher drops the marker and the
        steps the resumed run logs again, up to the last step it had judged: the same
        timeline, told once.
        """
        if isinstance(items, StructRows):  # typed rows hold no marker (their kinds were learned)
            if items:
                self._note_through(_row_step(items, -1))
            return items
        if not self._superseded and self._replay is None and not _may_hold_marker(items):
            self._note_through(_last_step(items))
            return items
        kept = NumberedItems()
        for item, line_no in zip(items, items.line_nos):
            if line_no in self._superseded or self._replayed(item):
                continue
            kept.append_row(item, line_no)
        if len(kept) < len(items):
            self.state.skip(len(items) - len(kept))
            self.superseded += len(items) - len(kept)
        return kept

    def _replayed(self, item: Any) -> bool:
        """Whether a line read while following is a marker or a step it replays."""
        if type(item) is not dict:
            return False
        kind, step = item.get("kind", "step"), _number(item.get("step"))
        if kind == RESUME:
            if step is None:
                return True  # a marker without a usable step replays nothing
            self._replay = (step, self._through)
            self._layout = None  # dicts from here on: the replayed steps are dropped one by one
            if self._layout_in_use is not None:
                self._layout_in_use.stop()
            return True
        if kind in KINDS and step is not None:
            if self._replay is not None and self._replay[0] <= step <= self._replay[1]:
                return True
            self._through = max(self._through, step)
        return False

    def _note_through(self, step: float | None) -> None:
        if step is not None:
            self._through = max(self._through, step)

    def poll(self, max_lines: int | None = None) -> int:
        """Read and judge what was appended since the last poll; returns lines read.

        With `max_lines`, stops after that many and resumes there on the next call, so a
        caller catching up on a long file can redraw in between.
        """
        n = self._take_health_lines()
        if not self._open():
            return n
        if self._pending is None:
            self._layout_in_use = self._layout
            self._pending = numbered_reads(self._metrics, self._layout, self._position)
        with _gc_paused():
            count = self._read_metrics(max_lines)
        if max_lines is None or count < max_lines:
            self._pending = None  # exhausted: the next poll looks at the file afresh
        return n + count

    def _read_metrics(self, max_lines: int | None) -> int:
        count = 0
        block: Any = NumberedItems()  # NumberedItems or StructRows: both split and extend
        shapes = None  # the typed shapes of the rows in `block`; None: dicts
        while max_lines is None or count < max_lines:
            items: Any = self._carry or (next(self._pending, None) if self._pending is not None else None)
            self._carry = None
            if items is None:
                break
            if max_lines is not None and count + len(items) > max_lines:  # the rest: next poll
                items, self._carry = items.split(max_lines - count)
            count += len(items)
            items = self._resumed(items)
            if not items:
                continue
            item_shapes = getattr(items, "shapes", None)
            if item_shapes is not None or set(map(type, items)) == {dict}:  # no bad line in it
                if block and item_shapes is not shapes:  # rows of another kind: judge those first
                    self._take_block(block)
                    block = NumberedItems()
                shapes = item_shapes
                if block:
                    block.extend_rows(items)
                else:
                    block = items
                while len(block) >= BLOCK_LINES:
                    now, block = block.split(BLOCK_LINES)
                    self._take_block(now)
                continue
            if shapes is not None:  # typed rows so far: judge them, then collect dicts
                if block:
                    self._take_block(block)
                block = NumberedItems()
            shapes = None
            block = self._take_items(items, block)
        if block:
            self._take_block(block)
        return count

    def _take_items(self, items: NumberedItems, block: NumberedItems) -> NumberedItems:
        """Dicts and bad lines in file order: the dicts go to ``block``, judged whenever it
        is full or a bad line comes (what came before a bad line is judged first)."""
        for item, line_no in zip(items, items.line_nos):
            if type(item) is dict:
                block.append_row(item, line_no)
                if len(block) >= BLOCK_LINES:
                    self._take_block(block)
                    block = NumberedItems()
            else:
                if block:
                    self._take_block(block)
                    block = NumberedItems()
                self._take_metrics(item, line_no)
        return block

    def poll_all(self) -> int:
        """Read and judge everything there is now; an unreadable file is a `RunLogError`."""
        total = 0
        while True:
            try:
                total += self.poll(max_lines=BLOCK_LINES)
            except PermissionError as err:
                raise RunLogError(f"cannot read {err.filename!r}: permission denied") from None
            if not self.catching_up:
                return total

    def _take_health_lines(self) -> int:
        n = 0
        for item in self._health.poll():
            n += 1
            self._take_health(item)
        return n

    def _event(self, event: HealthEvent, *, judged: bool = False) -> None:
        if not judged:  # the monitor applied the policy to what it judged
            applied, _ = self.policy.apply(event)
            if applied is None:
                return
            event = applied
        news = self.book.add(event)
        if news is not None:
            self.new_events.append(news)

    def _bad(self, bad: BadLine) -> None:
        self.state.bad_lines += 1
        self._event(HealthEvent(
            code="watch.bad_line", severity=CODES["watch.bad_line"].severity, source="watch",
            title=f"line {bad.line_no} of {os.path.basename(bad.path)} skipped: {bad.reason}",
            detail=bad.message(), evidence={"line": bad.line_no},
            where=f"{os.path.basename(bad.path)}:{bad.line_no}",  # one finding per line
            hint=CODES["watch.bad_line"].fix, time=time.time()))

    def _take_health(self, item: dict | BadLine) -> None:
        if isinstance(item, BadLine):
            self._bad(item)
            return
        try:
            event = HealthEvent.from_dict(item)
        except (TypeError, ValueError, AttributeError, OverflowError) as err:  # malformed, not fatal
            self._bad(BadLine(self._health.path, self._health.line_no, f"not a health event ({err})",
                              json.dumps(item)[:80]))
            return
        if event.code == END_CODE:
            self.ended = True
        elif event.code == CRASH_CODE:
            self.crashed = True
        self._event(event)

    def _take_metrics(self, item: dict | BadLine, line_no: int) -> None:
        if isinstance(item, BadLine):
            self._bad(item)
            return
        try:  # one reading of a row for all: a row the judging refuses, nobody sees
            record = StepRecord.from_metrics_line(item)
        except ROW_ERRORS as err:  # malformed, not fatal
            self._bad(BadLine(getattr(self._metrics, "path", self.run_dir), line_no,
                              f"not a metrics line ({err})", _snippet(item)))
            self.state.skip()
            return
        self.state.add(item)
        if self._on_line is not None:
            self._on_line(item)
        for event in self.monitor.observe_record(record):
            self._event(event, judged=True)

    def _take_block(self, lines: NumberedItems | StructRows) -> None:
        """Consecutive metrics lines (dicts, or typed `StructRows`), judged as one
        `MetricBlock` (the same verdict as line by line, see `Monitor.observe_block`)."""
        block = StructBlock(lines) if isinstance(lines, StructRows) else MetricBlock(lines)
        bad = []
        for row in block.irregular_rows():
            try:
                block.record(row)
            except ROW_ERRORS as err:  # malformed, not fatal
                bad.append((row, err))
        if bad:  # rare: report each, judge the rest
            line_nos = lines.line_nos  # blank and bad lines made no row: a row's place is not its line
            for row, problem in bad:
                self._bad(BadLine(getattr(self._metrics, "path", self.run_dir), line_nos[row],
                                  f"not a metrics line ({problem})", _snippet(block.lines[row])))
            self.state.skip(len(bad))
            dropped = {row for row, _ in bad}
            block = block.select(np.array([i for i in range(block.n) if i not in dropped], dtype=np.int64))
        # one reading of a row for all: the view and the report see the rows judged, no other
        if isinstance(block, StructBlock):
            self.state.add_many(block.lines, kinds=block.kind_names())
        else:
            self.state.add_many(block.lines)
        if self._on_line is not None:
            for line in block.lines:
                self._on_line(line)
        for event in self.monitor.observe_block(block):
            self._event(event, judged=True)

    def close(self) -> None:
        self._health.close()
        if self._metrics is not None:
            self._metrics.close()

    # -- the verdict ------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Step lines read and judged so far (a line of any kind but epoch and eval is a
        step; a line the judging refused is none)."""
        return self.state.kinds.get("step", 0)

    @property
    def last_line(self) -> str:
        """How the run's last line ended: "clean stop" (a complete line), "crash" (a torn
        line, or the health log records a crash) or "unknown" (no line to tell by)."""
        torn = any(getattr(getattr(t, "status", None), "torn_bytes", 0)
                   for t in (self._metrics, self._health) if t is not None)
        if torn or self.crashed:
            return "crash"
        return "clean stop" if self.state.lines else "unknown"

    @property
    def ended_early(self) -> bool:
        """Concluded without the monitor's closing summary, though the monitor had
        started a health log (a run logged without a monitor has no summary to miss)."""
        return self.concluded and not self.ended and os.path.isfile(self._health.path)

    def conclude(self) -> None:
        """Judge what only the files as a whole show, once the run is no longer followed:
        a run without a single step (`watch.no_steps`) and one whose monitor never wrote
        its closing summary (`watch.ended_early`). Call it after the last poll."""
        if self.concluded:
            return
        self.concluded = True
        last = self.state.last_step
        step = last.get("step") if isinstance(last, Mapping) else None
        step = step if isinstance(step, int) and not isinstance(step, bool) else None
        if not self.steps:
            info = CODES[NO_STEPS]
            self._event(HealthEvent(
                code=str(NO_STEPS), severity=info.severity, source="watch",
                title=f"no optimizer step in the run's files ({self.state.lines} line(s) read)",
                evidence={"lines": self.state.lines, "steps": 0}, hint=info.fix, time=time.time()))
        if self.ended_early:
            info = CODES[ENDED_EARLY]
            how = self.last_line
            self._event(HealthEvent(
                code=str(ENDED_EARLY), severity=info.severity, source="watch", step=step,
                title=f"the run ended without its closing summary; last line: {how}",
                detail=f"last_line: {how}", evidence={"steps": self.steps}, hint=info.fix,
                time=time.time()))

    def verdict(self, fail_on: Severity | str = Severity.ERROR) -> dict:
        """The JSON verdict: healthy means no event at or above `fail_on`."""
        fail_on = Severity.parse(fail_on)
        for f in self.monitor.findings():  # repeats the monitor folded raise the counts
            self.book.count(f.code, f.where, f.source, f.count, f.step)
        worst = self.book.worst()
        status = getattr(self._metrics, "status", None)
        return {
            "run_dir": self.run_dir,
            "healthy": worst is None or worst < fail_on,
            "worst_severity": None if worst is None else str(worst),
            "fail_on": str(fail_on),
            "events": self.book.dicts(),
            "last": self.state.last(),
            "reader": {"format": self.format, "lines": self.state.lines,
                       "bad_lines": self.state.bad_lines, "events_dropped": self.book.dropped,
                       "torn_bytes": getattr(status, "torn_bytes", 0), "ended": self.ended,
                       "steps": self.steps, "superseded": self.superseded, "ended_early": self.ended_early,
                       "last_line": self.last_line if self.ended_early else None,
                       "detectors": [d.name for d in self.monitor.detectors]},
        }


def exit_code(verdict: Mapping[str, Any]) -> int:
    return 0 if verdict["healthy"] else 1


def json_safe(obj: Any) -> Any:
    """Strict JSON for the verdict: NaN/Infinity become strings, which every parser reads."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj

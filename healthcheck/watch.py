"""`healthcheck watch RUN_DIR`: judge a run from its files, once or while it runs.

The training process may judge itself (its monitor writes health.jsonl), but it may also
be a loop that only logs metrics, an old run, or one whose monitor was switched off. So
`watch` re-runs every detector that needs no live model (those with ``needs_live``
False) on the metrics it reads, merges the result with health.jsonl, and reports one
verdict. Reading is incremental (`runlog`), so following a run costs one `stat` per file
per poll, and catching up on a long run streams through it in flat memory.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codes import CODES, Code, declare
from .columns import MetricBlock
from .events import HealthEvent, Severity
from .monitor import Monitor
from .policy import Policy
from .record import StepRecord
from .runlog import BadLine, KeyMap, RunLogError, detect_format, open_health, open_metrics
from .runlog._layout import LineLayout, StructRows
from .runlog._tail import NumberedItems, numbered_batches
from .typedblock import StructBlock
from .watchstate import RunState

BAD_LINE = declare(
    Code("watch.bad_line", Severity.WARNING,
         meaning="A line of a run's metrics or health log is not a JSON object (or not a "
                 "valid row); it was skipped.",
         fix="Something other than the training loop wrote to the file, or two writers "
             "interleaved their lines: give each process its own run dir.",
         repeats=True),
)[0]

END_CODE = "monitor.summary"  # the monitor writes it when it closes: the run has ended
MAX_EVENTS = 10_000  # distinct events kept; a per-step repeating code must not grow memory
_BATCH = 8_192  # lines judged per poll slice (one block), so a catching-up view still redraws


# ----------------------------------------------------------------------------- judging
def stream_detectors(detectors: Iterable[Any] | None = None) -> list[Any]:
    """The detectors that can judge a metrics file: those that need no live model."""
    if detectors is None:
        from .detectors import default_detectors

        detectors = default_detectors()
    return [d for d in detectors if not getattr(d, "needs_live", False)]


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


def _lists(tail: Any, layout: LineLayout | None, position: Callable[[], int]) -> Iterator[NumberedItems | StructRows]:
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


# ------------------------------------------------------------------------- the watcher
class RunWatch:
    """Everything `watch` knows about one run dir, advanced by `poll()`.

    The run dir and its metrics file may not exist yet (``--follow`` before training
    starts): polls then find nothing until they do. With ``fmt="auto"`` the format is
    detected once a metrics file of some kind appears. ``typed=False`` parses every
    metrics.jsonl line as a dict instead of decoding regular lines into typed rows
    (`runlog.LineLayout`): the same verdict, slower; a baseline for the benchmark.
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
        self._on_line = on_line
        self._metrics = None
        self._health = open_health(self.run_dir)
        self._pending: Iterator | None = None
        # the shapes of this run's lines, learned as they are read (typed=False: dicts only)
        self._layout = LineLayout() if typed else None
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
        return True

    def poll(self, max_lines: int | None = None) -> int:
        """Read and judge what was appended since the last poll; returns lines read.

        With `max_lines`, stops after that many and resumes there on the next call, so a
        caller catching up on a long file can redraw in between.
        """
        n = self._take_health_lines()
        if not self._open():
            return n
        if self._pending is None:
            self._pending = _lists(self._metrics, self._layout, self._position)
        with _gc_paused():
            count = self._read_metrics(max_lines)
        if max_lines is None or count < max_lines:
            self._pending = None  # exhausted: the next poll looks at the file afresh
        return n + count

    def _read_metrics(self, max_lines: int | None) -> int:
        count = 0
        block: NumberedItems | StructRows = NumberedItems()
        shapes = None  # the typed shapes of the rows in `block`; None: dicts
        while max_lines is None or count < max_lines:
            items = self._carry or next(self._pending, None)
            self._carry = None
            if items is None:
                break
            if max_lines is not None and count + len(items) > max_lines:  # the rest: next poll
                items, self._carry = items.split(max_lines - count)
            count += len(items)
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
                while len(block) >= _BATCH:
                    now, block = block.split(_BATCH)
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
                if len(block) >= _BATCH:
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
                total += self.poll(max_lines=_BATCH)
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
            event, _ = self.policy.apply(event)
            if event is None:
                return
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
        self._event(event)

    def _take_metrics(self, item: dict | BadLine, line_no: int) -> None:
        if isinstance(item, BadLine):
            self._bad(item)
            return
        self.state.add(item)
        if self._on_line is not None:
            self._on_line(item)
        try:
            record = StepRecord.from_metrics_line(item)
        except (TypeError, ValueError, AttributeError, OverflowError) as err:  # malformed, not fatal
            self._bad(BadLine(getattr(self._metrics, "path", self.run_dir), line_no,
                              f"not a metrics line ({err})", json.dumps(item, default=str)[:80]))
            return
        for event in self.monitor.observe_record(record):
            self._event(event, judged=True)

    def _take_block(self, lines: NumberedItems | StructRows) -> None:
        """Consecutive metrics lines (dicts, or typed `StructRows`), judged as one
        `MetricBlock` (the same verdict as line by line, see `Monitor.observe_block`)."""
        if isinstance(lines, StructRows):
            block = StructBlock(lines)
            self.state.add_many(block.lines, kinds=block.kind_names())
        else:
            block = MetricBlock(lines)
            self.state.add_many(lines)
        if self._on_line is not None:
            for line in block.lines:
                self._on_line(line)
        bad = []
        for row in block.irregular_rows():
            try:
                block.record(row)
            except (TypeError, ValueError, AttributeError, OverflowError) as err:  # malformed, not fatal
                bad.append((row, err))
        if bad:  # rare: report each, judge the rest
            line_nos = lines.line_nos  # blank and bad lines made no row: a row's place is not its line
            for row, err in bad:
                self._bad(BadLine(getattr(self._metrics, "path", self.run_dir), line_nos[row],
                                  f"not a metrics line ({err})", json.dumps(block.lines[row], default=str)[:80]))
            dropped = {row for row, _ in bad}
            block = block.select(np.array([i for i in range(block.n) if i not in dropped], dtype=np.int64))
        for event in self.monitor.observe_block(block):
            self._event(event, judged=True)

    def close(self) -> None:
        self._health.close()
        if self._metrics is not None:
            self._metrics.close()

    # -- the verdict ------------------------------------------------------------------
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


# ------------------------------------------------------------------------ the command
def check_readable(run_dir: str, fmt: str) -> None:
    """Raise `RunLogError` if `run_dir` cannot be judged (a usage error, exit 2).

    A dir holding only config.json or health.jsonl (or nothing) is a run that has not
    logged a step yet: that is judged (healthy, no steps), not refused.
    """
    if not os.path.exists(run_dir):
        raise RunLogError(f"run dir {run_dir!r} does not exist")
    if not os.path.isdir(run_dir):
        raise RunLogError(f"run dir {run_dir!r} is not a directory")
    if fmt != "auto":
        if fmt != "jsonl":
            open_metrics(run_dir, fmt).close()  # raises with the reason
        return
    try:
        detect_format(run_dir)
    except RunLogError:
        known = {"config.json", "health.jsonl", "gate.json", "checkpoints", "wandb", "report",
                 "report.html"}
        if set(os.listdir(run_dir)) - known:
            raise


@dataclass
class WatchOptions:
    """The settings of one `watch` invocation (the CLI's options, typed)."""

    follow: bool = False
    fail_on: Severity = Severity.ERROR
    as_json: bool = False
    interval: float = 0.5
    timeout: float | None = None
    fmt: str = "auto"
    keys: KeyMap = field(default_factory=KeyMap)
    policy: Policy | None = None
    color: bool | None = None  # None: rich decides from the terminal and NO_COLOR
    refresh_per_second: float = 4.0
    plain_every: float = 10.0


def _wait_for_dir(run_dir: str, opts: WatchOptions, say: Callable[[str], None]) -> None:
    if os.path.isdir(run_dir):
        return
    say(f"waiting for {run_dir} to appear" +
        (f" (up to {opts.timeout:g}s)" if opts.timeout is not None else ""))
    start = time.monotonic()
    while not os.path.isdir(run_dir):
        if opts.timeout is not None and time.monotonic() - start >= opts.timeout:
            raise RunLogError(f"run dir {run_dir!r} did not appear within --timeout {opts.timeout:g}s")
        time.sleep(min(opts.interval, 0.5))


def run_watch(run_dir: str, opts: WatchOptions, *, out=None, err=None,
              detectors: Sequence[Any] | None = None, is_tty: bool | None = None) -> int:
    """Judge `run_dir` as the options say and print the result; returns the exit status.

    Raises `RunLogError` for what the CLI reports as a usage error (exit 2).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    is_tty = out.isatty() if is_tty is None else is_tty

    def say(msg: str) -> None:
        print(msg, file=err, flush=True)

    if opts.follow:
        _wait_for_dir(run_dir, opts, say)
    else:
        check_readable(run_dir, opts.fmt)  # a follower waits for the files instead
    watch = RunWatch(run_dir, fmt=opts.fmt, keys=opts.keys, detectors=detectors, policy=opts.policy)
    try:
        if opts.follow:
            _follow(watch, opts, out, is_tty, say)
        else:
            watch.poll_all()
            if watch.missing_keys:  # nothing was judged: a typo, not a healthy run
                raise RunLogError(_missing_message(watch))
        if watch.missing_keys:
            say(f"warning: {_missing_message(watch)}")
        verdict = watch.verdict(opts.fail_on)
    finally:
        watch.close()
    if opts.as_json:
        print(json.dumps(json_safe(verdict), indent=None), file=out, flush=True)
    elif not opts.follow or not is_tty:
        _print_final(watch, verdict, out, is_tty, opts.color)
    return exit_code(verdict)


def _missing_message(watch: RunWatch) -> str:
    columns = watch.columns
    shown = ", ".join(columns[:12]) + (" …" if len(columns) > 12 else "")
    return (f"{', '.join(watch.missing_keys)} not found in the {watch.format} log of "
            f"{watch.run_dir!r}; its columns are: {shown or 'none yet'}")


def _console(out, color: bool | None):
    from rich.console import Console

    return Console(file=out, force_terminal=True if color else None, no_color=color is False)


def _print_final(watch: RunWatch, verdict: Mapping[str, Any], out, is_tty: bool,
                 color: bool | None = None) -> None:
    from . import watchview

    if is_tty:
        _console(out, color).print(watchview.render(watch.state, verdict["events"], status=_status(verdict)))
        return
    print(watchview.progress_line(watch.state), file=out)
    for e in verdict["events"]:
        print(watchview.event_line(e), file=out)
    print(_status(verdict), file=out, flush=True)


def _status(verdict: Mapping[str, Any]) -> str:
    n = len(verdict["events"])
    word = "healthy" if verdict["healthy"] else "UNHEALTHY"
    worst = verdict["worst_severity"] or "none"
    return f"{word}: {n} event(s), worst {worst}, fail-on {verdict['fail_on']}"


def _follow(watch: RunWatch, opts: WatchOptions, out, is_tty: bool, say) -> None:
    """Poll until the run ends (monitor summary), goes quiet for --timeout, or Ctrl-C."""
    from . import watchview

    live = None
    if is_tty and not opts.as_json:
        from rich.live import Live

        live = Live(console=_console(out, opts.color), auto_refresh=False, transient=False)
        live.start()
    min_redraw = 1.0 / opts.refresh_per_second
    last_draw = last_plain = 0.0
    last_news = time.monotonic()
    try:
        while True:
            n = watch.poll(max_lines=_BATCH)
            now = time.monotonic()
            if n:
                last_news = now
            if live is not None and now - last_draw >= min_redraw:
                live.update(_panel(watch, opts), refresh=True)
                last_draw = now
            elif live is None and not opts.as_json:
                for e in watch.new_events:
                    print(watchview.event_line(e.to_dict()), file=out, flush=True)
                if n and now - last_plain >= opts.plain_every:
                    print(watchview.progress_line(watch.state), file=out, flush=True)
                    last_plain = now
            watch.new_events.clear()
            if watch.catching_up:
                continue  # no sleep until the backlog is read
            if watch.ended:
                return
            if opts.timeout is not None and now - last_news >= opts.timeout:
                say(f"no new lines for {opts.timeout:g}s; stopping")
                return
            time.sleep(opts.interval)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.update(_panel(watch, opts), refresh=True)
            live.stop()


def _panel(watch: RunWatch, opts: WatchOptions):
    from . import watchview

    verdict = watch.verdict(opts.fail_on)
    return watchview.render(watch.state, verdict["events"][-watchview.MAX_EVENTS:],
                            status=_status(verdict), now=time.time())

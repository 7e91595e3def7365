"""`healthcheck watch RUN_DIR`: the command: judge a run once, or follow it while it runs.

`RunWatch` does the reading and judging; this module turns the command's options into
polls, prints the verdict (JSON, a plain log, or a live terminal view) and gives the exit
status.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..events import Severity
from ..policy import Policy
from .reading import KeyMap, RunLogError, check_readable
from .runwatch import BLOCK_LINES, RunWatch, exit_code, json_safe
from .view import clean


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
        print(clean(msg), file=err, flush=True)  # column names and paths come from the run

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
            if watch.picked_log:
                say(watch.picked_log)
            if watch.missing_keys:  # nothing was judged: a typo, not a healthy run
                raise RunLogError(_missing_message(watch))
            watch.conclude()
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
    from . import view

    if is_tty:
        _console(out, color).print(view.render(watch.state, verdict["events"], status=_status(verdict)))
        return
    print(view.progress_line(watch.state), file=out)
    for e in verdict["events"]:
        print(view.event_line(e), file=out)
    print(_status(verdict), file=out, flush=True)


def _status(verdict: Mapping[str, Any]) -> str:
    n = len(verdict["events"])
    word = "healthy" if verdict["healthy"] else "UNHEALTHY"
    worst = verdict["worst_severity"] or "none"
    return f"{word}: {n} event(s), worst {worst}, fail-on {verdict['fail_on']}"


def _follow(watch: RunWatch, opts: WatchOptions, out, is_tty: bool, say) -> None:
    """Poll until the run ends (monitor summary), goes quiet for --timeout, or Ctrl-C.
    The first two conclude the run (`RunWatch.conclude`); Ctrl-C does not: the run may
    go on."""
    from . import view

    live = None
    if is_tty and not opts.as_json:
        from rich.live import Live

        live = Live(console=_console(out, opts.color), auto_refresh=False, transient=False)
        live.start()
    min_redraw = 1.0 / opts.refresh_per_second
    last_draw = last_plain = 0.0
    last_news = time.monotonic()
    announced = False
    try:
        while True:
            n = watch.poll(max_lines=BLOCK_LINES)
            now = time.monotonic()
            if not announced and watch.format is not None:
                announced = True
                if watch.picked_log:
                    say(watch.picked_log)
            if n:
                last_news = now
            if live is not None and now - last_draw >= min_redraw:
                live.update(_panel(watch, opts), refresh=True)
                last_draw = now
            elif live is None and not opts.as_json:
                for e in watch.new_events:
                    print(view.event_line(e.to_dict()), file=out, flush=True)
                if n and now - last_plain >= opts.plain_every:
                    print(view.progress_line(watch.state), file=out, flush=True)
                    last_plain = now
            watch.new_events.clear()
            if watch.catching_up:
                continue  # no sleep until the backlog is read
            if watch.ended:
                watch.conclude()
                return
            if opts.timeout is not None and now - last_news >= opts.timeout:
                say(f"no new lines for {opts.timeout:g}s; stopping")
                watch.conclude()
                return
            time.sleep(opts.interval)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.update(_panel(watch, opts), refresh=True)
            live.stop()


def _panel(watch: RunWatch, opts: WatchOptions):
    from . import view

    verdict = watch.verdict(opts.fail_on)
    return view.render(watch.state, verdict["events"][-view.MAX_EVENTS:],
                            status=_status(verdict), now=time.time())

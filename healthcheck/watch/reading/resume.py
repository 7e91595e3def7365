"""Which lines of a resumed run's metrics.jsonl the resumed timeline drops.

A run resumed from a checkpoint writes ``{"kind": "resume", "step": S}`` and then logs
again the steps since that checkpoint; the lines before the marker at step S or later
are superseded (docs/run-dir.md, `healthcheck.record.resumed_timeline`). ``watch`` and
``report`` read a file as it streams, so they learn which lines to leave out before
reading: a scan for the marker's bytes (cheap, and nothing more for the usual file with
no resume), then, only when there is one, a pass reading each line's kind and step.
Lines are read with a bounded length, so a hostile file cannot make the scan hold an
unbounded line in memory.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from ...record import KINDS, RESUME

_MARK = b'"resume"'
_CHUNK = 1 << 20
_LINE_LIMIT = 8 << 20  # as the reader: longer lines are bad lines, never judged


def superseded_lines(path: str | os.PathLike[str]) -> frozenset[int]:
    """1-based numbers of the lines the resumed timeline drops: the resume markers and
    the step, epoch and eval lines they supersede. Empty when the file has no marker (or
    cannot be read: the reader reports that itself)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return frozenset()  # a FIFO or a device is the reader's to refuse, never to scan
        if not _mentions_resume(path):
            return frozenset()
        lines = list(_kinds_and_steps(path))
    except OSError:
        return frozenset()
    markers = [(no, step) for no, kind, step in lines if kind == RESUME and step is not None]
    if not markers:
        return frozenset()
    dropped = {no for no, kind, _ in lines if kind == RESUME}
    # a line is superseded when a later marker's step is at or below its own
    later_min = float("inf")
    pending = sorted(markers, reverse=True)
    for no, kind, step in reversed(lines):
        while pending and pending[0][0] > no:
            later_min = min(later_min, pending.pop(0)[1])
        if kind in KINDS and step is not None and step >= later_min:
            dropped.add(no)
    return frozenset(dropped)


def _mentions_resume(path: str | os.PathLike[str]) -> bool:
    tail = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            if _MARK in tail + chunk[: len(_MARK)] or _MARK in chunk:
                return True
            tail = chunk[-len(_MARK):]
    return False


def _kinds_and_steps(path: str | os.PathLike[str]) -> Any:
    """(line number, kind, step or None) of every line; unreadable lines give kind None."""
    with open(path, "rb") as fh:
        no = 0
        while raw := fh.readline(_LINE_LIMIT):
            no += 1
            if not raw.endswith(b"\n") and len(raw) >= _LINE_LIMIT:
                while (rest := fh.readline(_LINE_LIMIT)) and not rest.endswith(b"\n"):
                    pass  # the rest of an over-long line: skipped, as the reader skips it
                yield no, None, None
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                yield no, None, None
                continue
            if not isinstance(obj, dict):
                yield no, None, None
                continue
            kind = obj.get("kind", "step")
            step = obj.get("step")
            ok = isinstance(step, (int, float)) and not isinstance(step, bool)
            yield no, kind if isinstance(kind, str) else None, step if ok else None

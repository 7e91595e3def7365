"""Append-only JSON-lines files: the storage of metrics.jsonl and health.jsonl.

Both files are written by a training process that may be killed at any moment and read
by others while it writes. So a writer appends whole lines and flushes each one (and,
for events that must survive a crash, fsyncs it), and a reader treats a final line
without its newline as not yet written and a line that is not a JSON object as garbage
to report and skip, never as a reason to stop reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .safe_files import open_append, write_failure


def dumps(obj: Mapping[str, Any]) -> str:
    """One compact JSON line. Non-finite floats become the tokens NaN / Infinity, which is
    what Python's json module reads back (docs/run-dir.md)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=True, default=_default)


def _default(obj: Any) -> Any:
    # Tensors, numpy scalars and similar arrive here; .item()/float() turn them into numbers
    # without this module importing torch or numpy.
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class AppendWriter:
    """Appends one JSON object per line to a file, flushing (and optionally fsyncing) each.

    If the file already ends in a torn line (an earlier writer died mid-line), a newline is
    written first, so the first new line is not glued onto the torn one. The file is never
    opened through a symbolic link (`healthcheck.safe_files.open_append`), and a failed
    write raises `healthcheck.safe_files.RunFileError` with one sentence naming the file.
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._fsync = fsync
        self._fh = open_append(self.path)
        try:
            end = self._fh.seek(0, os.SEEK_END)
            if end > 0:
                self._fh.seek(end - 1)
                if self._fh.read(1) != b"\n":
                    self._fh.write(b"\n")
                    self._fh.flush()
            self._fh.seek(0, os.SEEK_END)
        except OSError as exc:
            self._fh.close()
            raise write_failure(self.path, exc) from None

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def write(self, obj: Mapping[str, Any]) -> None:
        if self._fh.closed:
            raise ValueError(f"cannot write to {self.path}: the writer is closed")
        try:
            self._fh.write(dumps(obj).encode("utf-8") + b"\n")
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise write_failure(self.path, exc) from None

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                raise write_failure(self.path, exc) from None
            finally:
                try:
                    self._fh.close()
                except OSError:
                    pass  # the flush above already failed and said why

    def __enter__(self) -> AppendWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class JsonlChunk:
    """What one read of a JSON-lines file found, from a byte offset to the last full line."""

    objects: list[dict] = field(default_factory=list)
    next_offset: int = 0  # where the next read should start: just after the last full line
    garbage: list[int] = field(default_factory=list)  # 1-based line numbers, counted from offset
    torn_bytes: int = 0  # bytes of an unfinished last line left for a later read


def read_jsonl(path: str | os.PathLike, offset: int = 0) -> JsonlChunk:
    """Read the complete lines of ``path`` from byte ``offset`` on.

    Calling again with ``next_offset`` continues where this call stopped, so a torn last
    line is read once it is finished and no line is ever returned twice.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, but got {offset=}")
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return JsonlChunk(next_offset=offset)
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the data ends with a newline
    out = JsonlChunk(next_offset=offset + len(data) - len(torn), torn_bytes=len(torn))
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, too deep
            out.garbage.append(number)
            continue
        if isinstance(obj, dict):
            out.objects.append(obj)
        else:
            out.garbage.append(number)
    return out

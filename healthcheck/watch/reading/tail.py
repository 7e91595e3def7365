"""Incremental reading of a file that another process is appending to.

A training loop appends metrics and events while `watch` reads them, so every read may
end in the middle of a line, and the file may be truncated (a restarted run reusing the
directory) or replaced (log rotation) between two reads. The tailer keeps a byte offset
and the file's identity, reads only the bytes added since the last poll, in chunks, and
hands out complete lines one at a time: memory stays flat however large the file grows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Union

from .errors import stat_regular

if TYPE_CHECKING:
    from .layout import LineLayout, StructRows

_CHUNK = 1 << 20  # 1 MiB: large enough that syscalls don't dominate, small enough to be flat
MAX_LINE = 8 << 20  # bytes: a longer line is no metrics line; it is skipped as it arrives
# what a skipped long line becomes in the stream: a line no JSON or CSV reader accepts,
# recognised and reported as too long (`too_long`)
TOO_LONG = b"\x00line too long: "
_SNIPPET = 80  # characters of a bad line kept for the warning; a line may be megabytes
_HEAD = 64  # bytes of the file's start remembered to notice it was rewritten in place


@dataclass(frozen=True)
class BadLine:
    """A line that could not be used; reported once, then skipped for good."""

    path: str
    line_no: int  # 1-based, counted from the start of the current file
    reason: str
    text: str  # the start of the line, for a human to recognise it

    def message(self) -> str:
        return f"{self.path}:{self.line_no}: {self.reason}: {self.text!r}"


def too_long(path: str, line_no: int, raw: bytes) -> BadLine:
    """The report of a line `LineTail` dropped for being longer than its limit."""
    return BadLine(path, line_no, raw[1:].decode("ascii", "replace"), "")


Item = Union[dict, BadLine]  # noqa: UP007 (a runtime alias; X | Y needs 3.10 types at import)
_scan_once = json.JSONDecoder().scan_once  # what json.loads runs, with the same defaults

try:  # five times faster than the standard parser on a metrics line; optional
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - the standard library path below stays exact
    _fast_loads = None


class NumberedItems(list):
    """Items of a reader (metrics lines, `BadLine`s) with the line of the file each came
    from: blank lines give no item, so an item's place in the list is not its line.
    `line_nos` is a range for a read whose every line is an item, a list otherwise."""

    __slots__ = ("line_nos",)

    def __init__(self, items: Iterable[Any] = (), line_nos: Sequence[int] = ()) -> None:
        super().__init__(items)
        self.line_nos = line_nos

    def split(self, n: int) -> tuple[NumberedItems, NumberedItems]:
        """The first ``n`` items and the rest, each with its lines."""
        return (NumberedItems(self[:n], self.line_nos[:n]), NumberedItems(self[n:], self.line_nos[n:]))

    def extend_rows(self, other: NumberedItems) -> None:
        self.extend(other)
        self._numbers().extend(other.line_nos)

    def append_row(self, item: Any, line_no: int) -> None:
        self.append(item)
        self._numbers().append(line_no)

    def _numbers(self) -> list[int]:
        if type(self.line_nos) is not list:
            self.line_nos = list(self.line_nos)
        return self.line_nos


def numbered_batches(items: Iterator[Any], line_no: Callable[[], int], size: int) -> Iterator[NumberedItems]:
    """Consecutive lists of up to ``size`` items, each numbered by ``line_no()`` read as
    the item is handed out (a reader's current line)."""
    batch = NumberedItems()
    for item in items:
        batch.append_row(item, line_no())
        if len(batch) >= size:
            yield batch
            batch = NumberedItems()
    if batch:
        yield batch


@dataclass(frozen=True)
class FileStatus:
    """What the tailer noticed about the file itself on the last poll."""

    exists: bool
    restarted: str | None  # "truncated" | "rotated" | None
    torn_bytes: int  # bytes of an unfinished last line held back


class LineTail:
    """Yields the complete lines appended to `path` since the previous poll.

    A final line without its newline is held back until the writer finishes it. The file
    may not exist yet (a run that has not started); polls then yield nothing. If the file
    shrinks below the offset it was truncated, and if its inode changes it was replaced:
    either way reading restarts at byte 0, after draining what the old file still held.
    """

    def __init__(self, path: str | os.PathLike, *, chunk_size: int = _CHUNK,
                 max_line: int = MAX_LINE) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, but got {chunk_size=}")
        self.path = os.fspath(path)
        self._chunk = chunk_size
        self._max_line = max_line
        self._skipping = 0  # bytes of a too-long line dropped so far (0: none under way)
        self._fh: BinaryIO | None = None
        self._ino: tuple[int, int] | None = None
        self.offset = 0  # bytes consumed, including the held-back torn tail
        self.line_no = 0  # complete lines handed out from the current file
        self._pending = b""
        self._head = b""
        self.status = FileStatus(exists=False, restarted=None, torn_bytes=0)

    # -- the public operations ----------------------------------------------------
    def poll(self) -> Iterator[tuple[int, bytes]]:
        """Yield (line_no, line without newline) for each newly completed line."""
        for first, block in self.poll_blocks():
            for line_no, line in enumerate(block.split(b"\n"), first):
                self.line_no = line_no
                yield line_no, line

    def poll_blocks(self) -> Iterator[tuple[int, bytes]]:
        """`poll` a read at a time: yield (number of its first line, the complete lines
        read, joined by newlines), so a reader can decode and split a megabyte at once
        instead of a line at a time. The caller sets `line_no` as it hands lines out."""
        restarted = None
        st = stat_regular(self.path)  # a FIFO, a device or a directory: a RunLogError
        if st is None:
            # Keep the old handle: a rotated file may reappear; until then nothing is new.
            self.status = FileStatus(False, None, len(self._pending))
            return
        ident = (st.st_dev, st.st_ino)
        if self._fh is not None and ident != self._ino:
            yield from self._drain()  # the writer may have added to the old file before moving it
            self._reset()
            restarted = "rotated"
        elif self._fh is not None and (st.st_size < self.offset or not self._same_head()):
            # Shorter than what we read, or rewritten in place (same inode, new start).
            self._reset()
            restarted = "truncated"
        if self._fh is None:
            self._fh = open(self.path, "rb")
            self._ino = (os.fstat(self._fh.fileno()).st_dev, os.fstat(self._fh.fileno()).st_ino)
        self.status = FileStatus(True, restarted, len(self._pending))
        yield from self._drain()
        self.status = FileStatus(True, restarted, len(self._pending))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # -- internals ------------------------------------------------------------------
    def _reset(self) -> None:
        self.close()
        self._ino = None
        self.offset = 0
        self.line_no = 0
        self._pending = b""
        self._head = b""
        self._skipping = 0

    def _same_head(self) -> bool:
        if not self._head or self._fh is None:
            return True
        return os.pread(self._fh.fileno(), len(self._head), 0) == self._head

    def _drain(self) -> Iterator[tuple[int, bytes]]:
        fh = self._fh
        if fh is None:
            return
        fh.seek(self.offset)
        while True:
            chunk = fh.read(self._chunk)
            if not chunk:
                return
            if len(self._head) < _HEAD and self.offset < _HEAD:
                self._head = (self._head + chunk)[:_HEAD]
            self.offset += len(chunk)
            if self._skipping:  # the rest of a too-long line: drop it up to its newline
                end = chunk.find(b"\n")
                if end < 0:
                    self._skipping += len(chunk)
                    continue
                chunk = TOO_LONG + b"%d bytes" % (self._skipping + end) + chunk[end:]
                self._skipping = 0
            data = self._pending + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) > self._max_line:  # memory stays bounded: keep none of it
                    self._skipping, self._pending = len(data), b""
                else:
                    self._pending = data
                continue
            self._pending = data[cut + 1:]  # b"" when the chunk ended on a newline
            first = self.line_no + 1
            self.line_no += data.count(b"\n", 0, cut) + 1  # the lines handed out, once read
            yield first, data[:cut]

    def __enter__(self) -> LineTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonLinesTail:
    """A `LineTail` whose lines are JSON objects, as in metrics.jsonl and health.jsonl.

    Lines that are not JSON objects become one `BadLine` each (the caller reports it once;
    the tailer never yields the same line twice) and reading goes on with the next line.
    """

    def __init__(self, path: str | os.PathLike, *, chunk_size: int = _CHUNK,
                 loads: Callable[[bytes], Any] = json.loads, max_line: int = MAX_LINE) -> None:
        self._lines = LineTail(path, chunk_size=chunk_size, max_line=max_line)
        self._loads = loads

    @property
    def path(self) -> str:
        return self._lines.path

    @property
    def status(self) -> FileStatus:
        return self._lines.status

    @property
    def line_no(self) -> int:
        return self._lines.line_no

    def poll(self) -> Iterator[Item]:
        if self._loads is not json.loads:
            for line_no, raw in self._lines.poll():
                yield from self._parse(line_no, raw)
            return
        # The fast path: a read is decoded at once and each line that is one JSON object,
        # nothing around it, is handed to the decoder's scanner directly, skipping what
        # json.loads adds per call (type checks, encoding detection, whitespace regexes);
        # a line that is anything else goes through json.loads as before.
        tail = self._lines
        if _fast_loads is not None:
            yield from self._poll_fast(tail)
            return
        scan = _scan_once
        for first, block in tail.poll_blocks():
            try:
                texts = block.decode("utf-8").split("\n")
            except UnicodeDecodeError:  # some line is not UTF-8: judge each on its own
                for line_no, raw in enumerate(block.split(b"\n"), first):
                    tail.line_no = line_no
                    yield from self._parse(line_no, raw)
                continue
            line_no = first - 1
            for text in texts:
                line_no += 1
                tail.line_no = line_no
                if text[:1] == "{":
                    try:
                        obj, end = scan(text, 0)
                    except (StopIteration, ValueError, RecursionError):
                        end = -1
                    if end == len(text) and type(obj) is dict:
                        yield obj
                        continue
                yield from self._parse(line_no, text.encode("utf-8"))

    def _poll_fast(self, tail: LineTail) -> Iterator[Item]:
        """orjson on each line; a line it refuses (NaN and Infinity, which Python's json
        writes and reads, or anything malformed) goes through json.loads as before."""
        for first, block in tail.poll_blocks():
            yield from self._lines_of(tail, first, block)

    def _lines_of(self, tail: LineTail, first: int, block: bytes) -> Iterator[Item]:
        """Each line of ``block`` (the first of them line ``first``) on its own, moving the
        reader's `line_no` along for a caller that reads it between items."""
        for line_no, raw in enumerate(block.split(b"\n"), first):
            tail.line_no = line_no
            yield from self._parse_fast(line_no, raw)

    def poll_many(self, layout: LineLayout | None = None) -> Iterator[NumberedItems | StructRows]:
        """`poll` a read (about 1 MiB) at a time, as one list: what a bulk reader wants.

        With orjson, a read whose every line is one JSON object is parsed in a single call
        (its lines joined into one array); any other read goes line by line as in `poll`.
        With a `LineLayout`, a read whose every line fits a shape it learned from earlier
        reads comes as `StructRows` instead of dicts. Either way the list knows the line
        each of its items came from (`line_nos`), and `line_no` is the read's last line
        as soon as the list is handed out.
        """
        if _fast_loads is None or self._loads is not json.loads:
            yield from numbered_batches(self.poll(), lambda: self.line_no, 4096)
            return
        tail = self._lines
        for first, block in tail.poll_blocks():
            count = tail.line_no - first + 1  # the reader counted the lines as it read them
            rows = None if layout is None else layout.decode(block, count, first)
            if rows is not None:
                yield rows
                continue
            try:
                objs = _fast_loads(b"[" + block.replace(b"\n", b",") + b"]")
            except ValueError:
                objs = None
            # the same number of objects as lines, all dicts: every line was one object
            if objs is not None and len(objs) == count and all(type(o) is dict for o in objs):
                if layout is not None:
                    layout.learn(objs)  # a clean read: the next ones likely have its shapes
                yield NumberedItems(objs, range(first, first + count))
            else:
                items = NumberedItems()
                for item in self._lines_of(tail, first, block):
                    items.append_row(item, tail.line_no)  # the line it was read from
                yield items

    def _parse_fast(self, line_no: int, raw: bytes) -> Iterator[Item]:
        try:
            obj = _fast_loads(raw)
        except ValueError:
            yield from self._parse(line_no, raw)
            return
        if type(obj) is dict:
            yield obj
        else:
            yield from self._parse(line_no, raw)

    def _parse(self, line_no: int, raw: bytes) -> Iterator[Item]:
        if not raw.strip():
            return  # blank lines carry nothing and are harmless
        if raw.startswith(TOO_LONG):
            yield too_long(self.path, line_no, raw)
            return
        try:
            obj = self._loads(raw)
        except RecursionError:
            yield BadLine(self.path, line_no, "JSON nested too deeply",
                          raw[:_SNIPPET].decode("utf-8", "replace"))
            return
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both
            yield BadLine(self.path, line_no, f"not JSON ({err.__class__.__name__})",
                          raw[:_SNIPPET].decode("utf-8", "replace"))
            return
        if not isinstance(obj, dict):
            yield BadLine(self.path, line_no, f"a JSON {type(obj).__name__}, not an object",
                          raw[:_SNIPPET].decode("utf-8", "replace"))
            return
        yield obj

    def close(self) -> None:
        self._lines.close()

    def __enter__(self) -> JsonLinesTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

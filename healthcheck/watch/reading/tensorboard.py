"""Reading scalars from TensorBoard event files without TensorBoard installed.

An event file is a sequence of records: `uint64 length | uint32 masked crc32c(length) |
payload | uint32 masked crc32c(payload)`, little-endian, each payload one `Event`
protocol buffer. Scalars are either `Summary.Value.simple_value` (SummaryWriter) or a
one-element `TensorProto` (TF2 `tf.summary.scalar`). Decoding those few fields by hand
is ~100 lines, so `watch` reads TensorBoard logs without the tensorboard package.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from .errors import stat_regular
from .keys import KeyMap
from .tail import BadLine

_EVENT_GLOB = "events.out.tfevents."
MAX_RECORD = 64 << 20  # bytes: far above any scalar event; a longer record is a corrupt header


# ---------------------------------------------------------------------------- crc32c
def _crc_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masking, so that a crc stored inside crc'd data stays well distributed."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------ protobuf wire format
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value): int for varints, bytes for everything else."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, val


_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_INT64 = 1, 2, 3, 9


def _tensor_scalar(buf: bytes) -> float | None:
    """The value of a one-element numeric TensorProto; None for anything else."""
    dtype, values = 0, []
    for num, _wire, val in _fields(buf):
        if num == 1:
            dtype = val
        elif num == 4:  # tensor_content: raw little-endian
            fmt = {_DT_FLOAT: "<f", _DT_DOUBLE: "<d", _DT_INT32: "<i", _DT_INT64: "<q"}.get(dtype)
            if fmt is None or len(val) != struct.calcsize(fmt):
                return None
            values.append(struct.unpack(fmt, val)[0])
        elif num == 5:  # float_val, packed or not
            values.extend(struct.unpack(f"<{len(val) // 4}f", val))
        elif num == 6:  # double_val
            values.extend(struct.unpack(f"<{len(val) // 8}d", val))
    return float(values[0]) if len(values) == 1 else None


def parse_event(buf: bytes) -> tuple[float, int, list[tuple[str, float]]]:
    """(wall_time, step, [(tag, value)]) of one Event; non-scalar values are skipped."""
    wall, step, scalars = 0.0, 0, []
    for num, wire, val in _fields(buf):
        if num == 1 and wire == 1:
            wall = struct.unpack("<d", val)[0]
        elif num == 2 and wire == 0:
            step = val - (1 << 64) if val >= 1 << 63 else val
        elif num == 5 and wire == 2:  # Summary
            for vnum, _, value in _fields(val):
                if vnum != 1:
                    continue
                tag, x = "", None
                for fnum, fwire, f in _fields(value):
                    if fnum == 1:
                        tag = f.decode("utf-8", "replace")
                    elif fnum == 2 and fwire == 5:
                        x = struct.unpack("<f", f)[0]
                    elif fnum == 8:
                        x = _tensor_scalar(f)
                if tag and x is not None:
                    scalars.append((tag, x))
    return wall, step, scalars


# ------------------------------------------------------------------------ the tailers
class RecordTail:
    """Yields the payloads of the records appended to one event file since the last poll.

    A record not yet complete is left for the next poll. A corrupt length header leaves no
    way to find the next record, so the rest of the file is given up after one report.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self._dead = False

    def poll(self) -> Iterator[bytes | BadLine]:
        if self._dead:
            return
        st = stat_regular(self.path)  # a FIFO would block the open: a RunLogError instead
        if st is None:
            return
        size = st.st_size
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        if size < self.offset:
            self.offset = 0
        with fh:
            fh.seek(self.offset)
            while True:
                head = fh.read(12)
                if len(head) < 12:
                    return
                length, crc = struct.unpack("<QI", head)
                if masked_crc32c(head[:8]) != crc:
                    self._dead = True
                    yield BadLine(self.path, self.offset, "corrupt record header; the rest of "
                                  "the file is skipped", head.hex())
                    return
                if length > MAX_RECORD:  # no scalar event is this long: a corrupt header
                    self._dead = True
                    yield BadLine(self.path, self.offset, f"record header claims {length} bytes; "
                                  "the rest of the file is skipped", head.hex())
                    return
                if self.offset + 16 + length > size:
                    return  # torn: the writer has not finished this record
                body = fh.read(length + 4)
                if len(body) < length + 4:
                    return  # torn: the writer has not finished this record
                payload, (crc,) = body[:length], struct.unpack("<I", body[length:])
                at = self.offset
                self.offset += 12 + length + 4
                if masked_crc32c(payload) != crc:
                    yield BadLine(self.path, at, "record payload fails its crc; skipped",
                                  payload[:40].hex())
                    continue
                yield payload


def find_event_files(root: str, depth: int = 2) -> list[str]:
    """Event files under `root`, at most `depth` folders down, sorted (= by creation time)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath[len(root):].count(os.sep) >= depth:
            dirnames[:] = []
        found += [os.path.join(dirpath, f) for f in filenames if f.startswith(_EVENT_GLOB)]
    return sorted(found)


class TensorBoardTail:
    """Yields metrics lines (docs/run-dir.md schema) for the scalars of a TensorBoard log dir.

    Scalars of one step may come as several events, and from several files (a `train/`
    and a `validation/` subfolder): each poll gathers them by step, names a subfolder's
    tags `folder/tag`, and turns each step into lines through the `KeyMap`.
    """

    def __init__(self, root: str | os.PathLike, keys: KeyMap | None = None) -> None:
        self.path = os.fspath(root)
        self.keys = keys or KeyMap()
        self._tails: dict[str, RecordTail] = {}
        self._lr: list[float] = []
        self.tags: set[str] = set()
        self.missing_keys: list[str] = []

    def poll(self) -> Iterator[dict | BadLine]:
        for path in find_event_files(self.path):
            self._tails.setdefault(path, RecordTail(path))
        groups: dict[int, dict[str, float]] = {}
        times: dict[int, float] = {}
        for path, tail in self._tails.items():
            prefix = os.path.relpath(os.path.dirname(path), self.path)
            prefix = "" if prefix == "." else prefix.replace(os.sep, "/") + "/"
            for item in tail.poll():
                if isinstance(item, BadLine):
                    yield item
                    continue
                try:
                    wall, step, scalars = parse_event(item)
                except (ValueError, IndexError, struct.error) as err:
                    yield BadLine(path, tail.offset, f"not an Event protobuf ({err})", item[:40].hex())
                    continue
                for tag, x in scalars:
                    groups.setdefault(step, {})[prefix + tag] = x
                    times[step] = wall
        for step in sorted(groups):
            row = groups[step]
            self.tags.update(row)
            self.missing_keys = self.keys.missing(self.tags)
            lrs = self.keys.lrs(row)
            if lrs:
                self._lr = lrs
            yield from self.keys.to_lines(row, step=step, epoch=None, time=times[step], lr=self._lr)

    def close(self) -> None:
        pass

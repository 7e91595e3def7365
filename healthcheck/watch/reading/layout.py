"""Typed decoding of a run's metrics lines, learned from the lines themselves.

A training loop writes the same few line shapes a million times: a step line with the
same keys and the same term and module names every time, an epoch line, an eval line.
Parsing each into a dict of dicts and then pulling numbers back out of them is most of
what catching up on a long run costs. Once a shape has been seen, `LineLayout` builds a
msgspec Struct for it and decodes whole reads straight into those: several times faster
than dicts, cheaper to free, and checked by the decoder as it goes (every key present,
no other key, each value of the type the shape had). A read with any line that does not
fit is refused as a whole and parsed as dicts instead, and its shapes are learned, so
odd lines are judged exactly as before; the typed path only ever speeds up lines that
are regular by construction.

Numbers are typed ``int | float`` so a value keeps the type JSON gave it (ints within
int64), and anything not a number, string or bool (lists, null, dicts of other things) is
left untyped. Decoding reads a stream of objects, so a read is also refused unless each of
its lines is exactly one object.

The decoder checks keys, not their order, and order is meaningful (the first and last
module of a gradient-norm mapping are the network's input and output ends). Columns
never depend on it, so a row becomes a dict only when it is judged record by record, and
then from its own line's bytes (`RawLines`): exactly the dict the line parses to.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union

import numpy as np

try:
    import msgspec
except ImportError:  # pragma: no cover - without it every read is parsed as dicts
    msgspec = None  # type: ignore[assignment]
try:
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = None  # type: ignore[assignment]

# An int is held as it is, within int64 (what a column's arithmetic is exact on): a larger
# one sends its read the dict way, where the record path decides what it means.
Int64 = Annotated[int, msgspec.Meta(ge=-(2 ** 63), le=2 ** 63 - 1)] if msgspec else Any
Number = Union[Int64, float] if msgspec else Any  # noqa: UP007 (a runtime value for msgspec, not an annotation)
# Counters a record reads as ints: typed as ints when the shape's line has them so, so a
# typed row's counters need no checking (a float there sends the read the dict way).
COUNTERS = frozenset({"step", "epoch", "rank", "schema", "steps_taken", "batches_seen"})
MAX_REFUSED = 16  # refused reads in a row before the layout gives up: shapes that never settle
_SENTINEL_TAG = "\x00"  # a second tag, so a line without "kind" is refused, not guessed


@dataclass(frozen=True)
class FieldSpec:
    """How one key of a line shape is held: its attribute on the Struct, and for a
    name -> number mapping (terms, norms per module) the attributes of its names."""

    key: str
    attr: str
    kind: str  # "int" (a counter), "number", "bool", "str", "mapping" or "any"
    names: tuple[str, ...] = ()  # a mapping's keys, in the order the line had them
    name_attrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class LineShape:
    """One learned line shape: its kind, its Struct type and its fields by key."""

    kind: str
    struct: type
    fields: Mapping[str, FieldSpec]


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _spec(key: str, attr: str, value: Any) -> tuple[FieldSpec, Any]:
    """A key's spec and the type msgspec checks its value against."""
    if key in COUNTERS and type(value) is int:
        return FieldSpec(key, attr, "int"), Int64
    if _is_number(value):
        return FieldSpec(key, attr, "number"), Number
    if type(value) is bool:
        return FieldSpec(key, attr, "bool"), bool
    if type(value) is str:
        return FieldSpec(key, attr, "str"), str
    if type(value) is dict and value and all(type(k) is str for k in value) \
            and all(_is_number(v) for v in value.values()):
        names = tuple(value)
        attrs = tuple(f"n{i}" for i in range(len(names)))
        inner = msgspec.defstruct(f"{attr}_mapping", [(a, Number) for a in attrs],
                                  rename=dict(zip(attrs, names)), forbid_unknown_fields=True,
                                  gc=False)
        return FieldSpec(key, attr, "mapping", names, attrs), inner
    return FieldSpec(key, attr, "any"), Any


def _nameable(name: Any) -> bool:
    """A key msgspec can decode by name: a str without a quote, a backslash or a control
    character (a field name it refuses). Lines with other keys are read as dicts."""
    return type(name) is str and not any(c in name for c in '"\\') and all(c >= " " for c in name)


def learn_shape(line: Mapping[str, Any]) -> LineShape | None:
    """The shape of one parsed line, or None when it cannot be typed (no string kind, or
    a key or mapping name no Struct field can carry)."""
    kind = line.get("kind")
    if type(kind) is not str or kind == _SENTINEL_TAG or not _nameable(kind):
        return None
    for key, value in line.items():
        if not _nameable(key) or (type(value) is dict and not all(map(_nameable, value))):
            return None
    fields: dict[str, FieldSpec] = {}
    struct_fields = []
    for i, (key, value) in enumerate(line.items()):
        if key == "kind":
            continue
        spec, typ = _spec(key, f"k{i}", value)
        fields[key] = spec
        struct_fields.append((spec.attr, typ))
    struct = msgspec.defstruct(
        f"line_{kind}", struct_fields, rename={s.attr: s.key for s in fields.values()},
        tag_field="kind", tag=kind, forbid_unknown_fields=True, gc=False)
    return LineShape(kind, struct, fields)


class RawLines:
    """The bytes of one read and the positions of its newlines (as the decoder's check
    found them), to hand out any one of its lines."""

    __slots__ = ("block", "first_line", "_newlines", "_ends")

    def __init__(self, block: bytes, newlines: np.ndarray, first_line: int = 1) -> None:
        self.block = block
        self.first_line = first_line  # the line of the file the read starts with
        self._newlines = newlines
        self._ends: list[int] | None = None  # the newlines as a list, built on first use

    def line(self, i: int) -> bytes:
        ends = self._ends
        if ends is None:
            ends = self._ends = [*self._newlines.tolist(), len(self.block)]
        return self.block[ends[i - 1] + 1 if i else 0:ends[i]]


Segment = tuple  # (RawLines, index of its first line, number of lines)


class StructRows(list):
    """Typed rows (a read decoded by a `LineLayout`, or consecutive reads of one layout):
    one Struct per line, with the shapes to read them and where each line's bytes are."""

    __slots__ = ("shapes", "segments")

    def __init__(self, rows: Iterable[Any], shapes: Mapping[type, LineShape],
                 segments: list[Segment]) -> None:
        super().__init__(rows)
        self.shapes = shapes
        self.segments = segments

    @property
    def line_nos(self) -> list[int]:
        """The file line of each row, for reporting a row that fails later checks where
        it is (a typed read has no blank line, so its rows' lines are consecutive)."""
        return [raw.first_line + i for raw, first, count in self.segments
                for i in range(first, first + count)]

    def extend_rows(self, other: StructRows) -> None:
        self.extend(other)
        self.segments = self.segments + other.segments

    def split(self, n: int) -> tuple[StructRows, StructRows]:
        """The first ``n`` rows and the rest, each knowing its lines."""
        head: list[Segment] = []
        tail: list[Segment] = []
        left = n
        for raw, first, count in self.segments:
            if left >= count:
                head.append((raw, first, count))
            elif left > 0:
                head.append((raw, first, left))
                tail.append((raw, first + left, count - left))
            else:
                tail.append((raw, first, count))
            left -= count
        return (StructRows(self[:n], self.shapes, head), StructRows(self[n:], self.shapes, tail))


class LineLayout:
    """The line shapes of one metrics file, learned from the reads parsed as dicts."""

    def __init__(self, max_refused: int = MAX_REFUSED) -> None:
        self.max_refused = max_refused
        self.refused = 0  # reads in a row that did not fit
        self._by_kind: dict[str, LineShape] = {}
        self._by_type: dict[type, LineShape] = {}
        self._decoder: Any = None

    @property
    def active(self) -> bool:
        return msgspec is not None and self.refused <= self.max_refused

    def stop(self) -> None:
        """Decode nothing from here on: every later read is parsed as dicts."""
        self.refused = self.max_refused + 1

    @property
    def shapes(self) -> Mapping[type, LineShape]:
        return self._by_type

    def learn(self, lines: list[dict]) -> None:
        """Take the shape of the last line of each kind in a read parsed as dicts: the
        shape the next reads most likely have."""
        if not self.active or not lines:
            return
        latest: dict[str, dict] = {}
        for line in reversed(lines):
            kind = line.get("kind")
            if type(kind) is str and kind not in latest:
                latest[kind] = line
        changed = False
        for line in latest.values():
            try:
                shape = learn_shape(line)
            except (ValueError, TypeError):  # a shape msgspec cannot type: those stay dicts
                shape = None
            if shape is not None:
                self._by_kind[shape.kind] = shape
                changed = True
        if changed:
            self._by_type = {s.struct: s for s in self._by_kind.values()}
            sentinel = msgspec.defstruct("line_sentinel", [], tag_field="kind", tag=_SENTINEL_TAG)
            self._decoder = msgspec.json.Decoder(Union[tuple([*self._by_type, sentinel])])  # noqa: UP007

    def decode(self, block: bytes, count: int, first_line: int = 1) -> StructRows | None:
        """The rows of ``block`` (``count`` lines joined by newlines, the first of them
        line ``first_line`` of the file), or None when some line does not fit a learned
        shape exactly; the caller then parses it as dicts."""
        if self._decoder is None or not self.active:
            return None
        # The decoder reads a stream of objects, not lines: each line must be one object.
        # Every line opening with "{" and closing with "}" (an object cannot go on past a
        # line that ends in "}" with one that starts with "{") and as many objects as
        # lines means one object a line: no blank line, no two objects on one.
        data = np.frombuffer(block, dtype=np.uint8)
        newlines = _newlines(block)
        if not (newlines.size == count - 1 and block[:1] == b"{" and block[-1:] == b"}"
                and (data[newlines - 1] == _CLOSE).all() and (data[newlines + 1] == _OPEN).all()):
            self._refuse()
            return None
        try:
            rows = self._decoder.decode_lines(block)
        except (msgspec.DecodeError, ValueError, RecursionError):  # RecursionError: a hostile nesting depth
            self._refuse()
            return None
        if len(rows) != count or not set(map(type, rows)) <= self._by_type.keys():
            self._refuse()
            return None
        self.refused = 0
        return StructRows(rows, self._by_type, [(RawLines(block, newlines, first_line), 0, count)])

    def _refuse(self) -> None:
        self.refused += 1


_OPEN, _CLOSE = ord("{"), ord("}")


def _newlines(block: bytes) -> np.ndarray:
    """Positions of the newlines in ``block``: one vectorised pass, a third of a split."""
    return np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)


def parse_line(raw: bytes) -> dict:
    """A line's dict as the untyped path parses it."""
    if _fast_loads is not None:
        try:
            return _fast_loads(raw)
        except ValueError:
            pass
    return json.loads(raw)


__all__ = ["FieldSpec", "LineShape", "LineLayout", "RawLines", "StructRows", "learn_shape", "parse_line"]

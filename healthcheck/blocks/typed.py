"""A `MetricBlock` over typed rows, so the columns come from Struct attributes.

When `LineLayout` decoded a read, its lines are msgspec Structs, one type per line shape
(step, epoch, eval). Their columns are read with one C-level attribute pass per field
and shape, and no dict is built unless a row is judged one record at a time (`record`)
or a caller asks for it (`lines`). Judged by the monitor, the block gives the verdict a
`MetricBlock` of the same lines parsed as dicts gives, which is the verdict of judging
them one by one; rows are irregular when they are odd among the rows of their own shape.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Mapping, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from ..watch.reading import FieldSpec, LineShape, Segment, StructRows, parse_line
from .columns import KIND_CODES, MAPPINGS, SCALARS, MetricBlock

_FLOAT_KINDS = ("int", "number", "bool")  # fields a float column holds exactly
_RECORD_INTS = ("rank", "schema", "steps_taken", "batches_seen")  # see MetricBlock._odd_record_fields


class LineDicts(Sequence):
    """Typed rows as the dicts their lines parse to, each parsed from its own bytes on
    first access and kept."""

    def __init__(self, segments: list[Segment]) -> None:
        self._segments = segments
        self._starts = list(itertools.accumulate((count for _, _, count in segments), initial=0))
        self._dicts: dict[int, dict] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        if i < 0:
            i += len(self)
        d = self._dicts.get(i)
        if d is None:
            k = bisect.bisect_right(self._starts, i) - 1
            raw, first, _ = self._segments[k]
            d = self._dicts[i] = parse_line(raw.line(first + i - self._starts[k]))
        return d

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))


class SelectedLines(Sequence):
    """Some rows of a `LineDicts` (a shape's rows, a selection), sharing its parsed dicts."""

    def __init__(self, parent: Sequence[dict], index: list[int]) -> None:
        self._parent = parent
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self._parent[self._index[i]]

    def __iter__(self) -> Iterator[dict]:
        return (self._parent[j] for j in self._index)


class _Group:
    """The rows of one shape: where they are in the block, and the rows themselves."""

    __slots__ = ("shape", "idx", "rows", "first")

    def __init__(self, shape: LineShape, idx: np.ndarray | None, rows: Sequence[Any], first: int) -> None:
        self.shape = shape
        self.idx = idx  # None: every row of the block
        self.rows = rows
        self.first = first  # the block row of the group's first line


class StructBlock(MetricBlock):
    """Consecutive typed rows of one `LineLayout`, as columns.

    A block of several shapes (step lines with an epoch and an eval line now and then)
    is judged shape by shape: `take` hands the monitor the block of one shape's rows,
    where every row has the same fields and names, so none is irregular for lacking a
    field the other shapes have, and each column is one attribute pass.
    """

    def __init__(self, rows: StructRows | Sequence[Any], shapes: Mapping[type, LineShape] | None = None,
                 lines: Sequence[dict] | None = None) -> None:
        """``rows`` as the reader made them (`StructRows`), or any typed rows with their
        ``shapes`` and their ``lines`` as dicts."""
        if isinstance(rows, StructRows):
            shapes, lines = rows.shapes, LineDicts(rows.segments)
        self.rows = rows
        self.shapes = shapes
        types = list(map(type, rows))
        distinct = list(dict.fromkeys(types))  # in order of first appearance
        self._by_shape: dict[int, StructBlock] = {}  # group -> the block of its rows
        if len(distinct) <= 1:
            self._groups = [_Group(shapes[t], None, rows, 0) for t in distinct]
            self._inverse = None
            kind = np.full(len(rows), KIND_CODES.get(shapes[distinct[0]].kind, 0) if distinct else 0,
                           dtype=np.int8)
        else:
            code_of = {t: c for c, t in enumerate(distinct)}
            codes = np.fromiter(map(code_of.__getitem__, types), dtype=np.int8, count=len(types))
            order = np.argsort(codes, kind="stable")
            ordered = itemgetter(*order.tolist())(rows)
            bounds = np.searchsorted(codes[order], np.arange(len(distinct) + 1))
            self._groups = []
            for c, t in enumerate(distinct):
                lo, hi = int(bounds[c]), int(bounds[c + 1])
                idx = order[lo:hi]
                self._groups.append(_Group(shapes[t], idx, list(ordered[lo:hi]), int(idx[0])))
            self._inverse = np.argsort(order).tolist()  # block row -> position in `ordered`
            kind = np.array([KIND_CODES.get(shapes[t].kind, 0) for t in distinct], dtype=np.int8)[codes]
        super().__init__(lines, kind)
        self._fields: dict[str, list[Any]] = {}

    def kind_names(self) -> list[str]:
        """The kind of every row, as the lines' "kind" fields say."""
        return self._merge([[g.shape.kind] * len(g.rows) for g in self._groups])

    # -- rows --------------------------------------------------------------------------
    def _shape_block(self, c: int) -> StructBlock:
        block = self._by_shape.get(c)
        if block is None:
            g = self._groups[c]
            block = self._by_shape[c] = StructBlock(g.rows, self.shapes, SelectedLines(self.lines, g.idx.tolist()))
        return block

    def irregular_rows(self) -> list[int]:
        """Rows irregular among the rows of their own shape (see the class docstring).

        Rows of one shape have the same mapping names, and numbers for counters, so only
        the fields the decoder left untyped can make a row irregular: only those columns
        are built here."""
        if self._inverse is None:
            fields = self._groups[0].shape.fields if self._groups else {}
            for key in MAPPINGS:
                if key in fields and fields[key].kind != "mapping":
                    self.mapping(key)
            for key in SCALARS:  # a typed number is an int64 or a float: it always converts
                if key in fields and fields[key].kind not in _FLOAT_KINDS:
                    self.scalar(key)
            self.lr()
            for key in ("step", "epoch"):
                if key in fields and fields[key].kind not in ("int", "number"):
                    self.ticks(key)
            if all(fields[key].kind == "int" for key in _RECORD_INTS if key in fields) \
                    and "weight_sources" not in fields:
                return np.flatnonzero(self.irregular).tolist()  # ints by type, no sources
            return self._odd_record_fields()
        for c, g in enumerate(self._groups):
            odd = self._shape_block(c).irregular_rows()
            if odd:
                self.irregular[g.idx[odd]] = True
        return np.flatnonzero(self.irregular).tolist()

    def take(self, rows: np.ndarray) -> MetricBlock:
        if self._inverse is not None:
            for c, g in enumerate(self._groups):
                if g.idx.size == rows.size and np.array_equal(g.idx, rows):
                    return self._shape_block(c)
        return super().take(rows)

    def select(self, rows: np.ndarray) -> StructBlock:
        picked = rows.tolist()
        return StructBlock([self.rows[i] for i in picked], self.shapes, SelectedLines(self.lines, picked))

    # -- columns ----------------------------------------------------------------------
    def _merge(self, per_group: list[list[Any]]) -> list[Any]:
        """Values listed group by group, back in block order."""
        if self._inverse is None:
            return per_group[0] if per_group else []
        flat = [v for values in per_group for v in values] if len(per_group) > 1 else per_group[0]
        return list(itemgetter(*self._inverse)(flat))

    def _merge_floats(self, per_group: list[np.ndarray]) -> np.ndarray:
        if self._inverse is None:
            return per_group[0] if per_group else np.zeros(0)
        return np.concatenate(per_group)[self._inverse]

    def _specs(self, key: str) -> list[FieldSpec | None]:
        return [g.shape.fields.get(key) for g in self._groups]

    def field(self, key: str) -> list[Any]:
        values = self._fields.get(key)
        if values is None:
            values = self._fields[key] = self._field(key)
        return values

    def _field(self, key: str) -> list[Any]:
        out = []
        for g, spec in zip(self._groups, self._specs(key)):
            if spec is None:
                out.append([None] * len(g.rows))
                continue
            if spec.kind == "mapping":  # as dicts, in each line's own order
                lines = self.lines if g.idx is None else SelectedLines(self.lines, g.idx.tolist())
                out.append([line[key] for line in lines])
            else:
                out.append(list(map(attrgetter(spec.attr), g.rows)))
        return self._merge(out)

    def scalar(self, key: str) -> np.ndarray:
        col = self._scalars.get(key)
        if col is not None:
            return col
        specs = self._specs(key)
        if not all(s is None or s.kind in _FLOAT_KINDS for s in specs):
            return super().scalar(key)  # strings, lists, null...: judged as the dict path does
        parts = [np.full(len(g.rows), np.nan) if s is None
                 else np.fromiter(map(attrgetter(s.attr), g.rows), dtype=np.float64, count=len(g.rows))
                 for g, s in zip(self._groups, specs)]
        col = self._scalars[key] = self._merge_floats(parts)
        return col

    def mapping(self, key: str) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
        cached = self._mappings.get(key)
        if cached is not None:
            return cached
        specs = self._specs(key)
        having = [(g, s) for g, s in zip(self._groups, specs) if s is not None]
        if not having or any(s.kind != "mapping" for _, s in having):
            return super().mapping(key)  # absent, or not a name -> number dict everywhere
        names = min(having, key=lambda gs: gs[0].first)[1].names  # the first row's, as there
        size = len(names)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for g, spec in zip(self._groups, specs):
            m = len(g.rows)
            own = {} if spec is None else dict(zip(spec.names, spec.name_attrs))
            if spec is None or len(own) != size or own.keys() != set(names):
                self._mark_irregular(g)  # no such field, or other names: the slow path's rows
            inner = [] if spec is None else list(map(attrgetter(spec.attr), g.rows))  # one pass over the rows
            for name in names:
                attr = own.get(name)
                parts[name].append(
                    np.full(m, np.nan) if attr is None
                    else np.fromiter(map(attrgetter(attr), inner), dtype=np.float64, count=m))
        cols = {name: self._merge_floats(p) for name, p in parts.items()}
        self._mappings[key] = (names, cols)
        return names, cols

    def _mark_irregular(self, group: _Group) -> None:
        if group.idx is None:
            self.irregular[:] = True
        else:
            self.irregular[group.idx] = True


__all__ = ["LineDicts", "SelectedLines", "StructBlock"]

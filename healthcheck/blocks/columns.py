"""A block of metrics lines as numpy columns, so a long log is screened in bulk.

Judging a metrics file one record at a time costs tens of microseconds a line in Python,
so catching up on a million-line run took a minute before `watch` could say anything.
Yet almost every line of a run is unremarkable to almost every detector. A detector that
implements `Detector.screen` looks at a `MetricBlock`'s columns and names the rows it
must see; the monitor runs the detector's exact per-record ``check`` on those rows (and
on the few before each, to bring its state along) and skips the rest. The columns only
decide which rows are looked at: every event still comes from ``check`` on a real
`StepRecord`, built for the rows that need one.

A row whose fields do not fit the columns (a missing or extra key, a value that is not a
number) is *irregular*: every detector sees it, so odd lines are judged exactly as the
record-by-record path would judge them.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np

from ..record import StepRecord

KIND_CODES = {"step": 0, "epoch": 1, "eval": 2}  # any other kind is read as a step
KIND_NAMES = {code: name for name, code in KIND_CODES.items()}
MAPPINGS = ("terms", "weights", "grad_norm", "update_norm", "param_norm", "metrics", "amp")
SCALARS = ("loss", "time")  # numbers a record converts with float(): an int too big for it fails
_MISSING = object()  # a key absent from a row's mapping: float() of it fails on purpose


class MetricBlock:
    """Consecutive metrics lines (plain dicts, as the reader parsed them), as columns.

    Columns are built on first use and cached: a detector pays only for the fields it
    reads, and detectors reading the same field share the work.
    """

    def __init__(self, lines: Sequence[dict], kind: np.ndarray | None = None) -> None:
        self.lines = lines
        self.n = len(lines)
        self.irregular = np.zeros(self.n, dtype=bool)
        if kind is None:
            kinds = _values(lines, "kind", "step")
            kind = np.array([KIND_CODES.get(k, 0) if type(k) is str else 0 for k in kinds], dtype=np.int8)
        self.kind = kind
        self._records: dict[int, StepRecord] = {}
        self._scalars: dict[str, np.ndarray] = {}
        self._mappings: dict[str, tuple[tuple[str, ...], dict[str, np.ndarray]]] = {}
        self._lr: np.ndarray | None = None
        self._ticks: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def irregular_rows(self) -> list[int]:
        """Rows some column could not hold (after building every column a check reads)."""
        for key in MAPPINGS:
            self.mapping(key)
        for key in SCALARS:
            self.scalar(key)
        self.lr()
        self.ticks("step")
        self.ticks("epoch")
        return self._odd_record_fields()

    def _odd_record_fields(self) -> list[int]:
        """Mark rows whose ints or sources the record conversion reads another way (or
        cannot read: a NaN counter, "5.5"); all irregular rows."""
        ints_or_none = {int, type(None)}
        if not (set(map(type, self.field("rank"))) <= ints_or_none
                and set(map(type, self.field("schema"))) <= ints_or_none
                and set(map(type, self.field("steps_taken"))) <= ints_or_none
                and set(map(type, self.field("batches_seen"))) <= ints_or_none
                and set(map(type, self.field("weight_sources"))) <= {dict, type(None)}):
            empty: dict = {}
            odd = [i for i, line in enumerate(self.lines)
                   if type(line.get("rank", 0)) is not int or type(line.get("schema", 1)) is not int
                   or type(line.get("steps_taken", 0)) not in ints_or_none
                   or type(line.get("batches_seen", 0)) not in ints_or_none
                   or type(line.get("weight_sources", empty)) is not dict]
            self.irregular[odd] = True
        return np.flatnonzero(self.irregular).tolist()

    # -- rows --------------------------------------------------------------------------
    def take(self, rows: np.ndarray) -> MetricBlock:
        """The block of ``rows`` only (ascending), for a detector that judges only those:
        its screen then compares a row with the row it judged before and counts windows in
        its own rows, not in lines of other kinds or steps it skips. Columns already built
        are sliced, not rebuilt (with their irregular rows)."""
        sub = self.select(rows)
        sub.irregular = self.irregular[rows]
        sub._scalars = {k: v[rows] for k, v in self._scalars.items()}
        sub._mappings = {k: (names, {n: c[rows] for n, c in cols.items()})
                         for k, (names, cols) in self._mappings.items()}
        sub._lr = None if self._lr is None else self._lr[rows]
        sub._ticks = {k: v[rows] for k, v in self._ticks.items()}
        return sub

    def select(self, rows: np.ndarray) -> MetricBlock:
        """A fresh block of ``rows`` (ascending): nothing built yet, judged on its own."""
        return MetricBlock([self.lines[i] for i in rows.tolist()], self.kind[rows])

    def record(self, row: int) -> StepRecord:
        """The row as the record-by-record path sees it (errors as there)."""
        r = self._records.get(row)
        if r is None:
            r = self._records[row] = StepRecord.from_metrics_line(self.lines[row])
        return r

    def ticks(self, field: str) -> np.ndarray:
        """The step or epoch counter of every row, as the monitor's ``every`` reads it."""
        t = self._ticks.get(field)
        if t is None:
            values = self.field(field)
            if set(map(type, values)) == {int}:
                try:
                    t = self._ticks[field] = np.array(values, dtype=np.int64)
                    return t
                except OverflowError:  # beyond int64: a record holds it as a Python int
                    pass
            try:
                ints = [v if type(v) is int else int(v or 0) for v in values]
            except (TypeError, ValueError, OverflowError):  # the record path raises for such a row
                t = np.zeros(self.n, dtype=np.int64)
                self.irregular[:] = True
            else:
                try:
                    t = np.array(ints, dtype=np.int64)
                except OverflowError:  # exact Python ints, so ``every`` picks the record path's rows
                    t = np.array(ints, dtype=object)
            self._ticks[field] = t
        return t

    # -- columns ----------------------------------------------------------------------
    def scalar(self, key: str) -> np.ndarray:
        """One number per row; NaN where the key is absent, null or not a number."""
        col = self._scalars.get(key)
        if col is None:
            col = self._scalars[key] = self._floats(self.field(key), allow_none=True)
        return col

    def field(self, key: str) -> list[Any]:
        """The raw value of ``key`` in every row (None where absent)."""
        try:
            return list(map(itemgetter(key), self.lines))
        except KeyError:
            return _values(self.lines, key)

    def mapping(self, key: str) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
        """A field holding a name -> number dict (terms, weights, norms per module).

        The names are those of the first row that has the field, in its order; a row
        with other names (or the field missing where others have it) is irregular.
        """
        cached = self._mappings.get(key)
        if cached is not None:
            return cached
        dicts = self.field(key)
        if dicts.count(None) == self.n:  # e.g. no AMP in this run
            self._mappings[key] = ((), {})
            return (), {}
        names: tuple[str, ...] = ()
        for d in dicts:
            if type(d) is dict and d:
                names = tuple(d)
                break
        cols: dict[str, np.ndarray] = {}
        if not names:
            bad = np.array([d is not None and d != {} for d in dicts], dtype=bool)
            self.irregular |= bad
        else:
            empty: dict = {}
            fixed = dicts if set(map(type, dicts)) == {dict} else [d if type(d) is dict else empty for d in dicts]
            size = len(names)
            lengths = np.fromiter(map(len, fixed), dtype=np.int64, count=self.n)
            self.irregular |= lengths != size
            # Rows without the field (epoch and eval lines lack the norms, say) are already
            # irregular: the columns are read from the others only, so the fast path holds.
            rows = None if (lengths != 0).all() else np.flatnonzero(lengths != 0)
            having = fixed if rows is None else [fixed[i] for i in rows.tolist()]
            for name in names:
                try:  # the common case in one C loop; a gap or an odd value takes the slow path
                    col = np.fromiter(map(itemgetter(name), having), dtype=np.float64, count=len(having))
                except (KeyError, TypeError, ValueError, OverflowError):
                    col = self._floats([d.get(name, _MISSING) for d in fixed], allow_none=False)
                    rows_done = True
                else:
                    rows_done = rows is None
                if not rows_done:
                    full = np.full(self.n, np.nan)
                    full[rows] = col
                    col = full
                cols[name] = col
        self._mappings[key] = (names, cols)
        return names, cols

    def lr(self) -> np.ndarray:
        """Learning rate per row and group, (n, groups); a scalar lr is one group."""
        if self._lr is not None:
            return self._lr
        values = self.field("lr")
        first = next((v for v in values if v is not None), None)
        width = len(first) if isinstance(first, list) else (0 if first is None else 1)
        if width and set(map(type, values)) == {list} and set(map(len, values)) == {width}:
            try:
                if width == 1:  # one param group: one C pass, not a list per row
                    self._lr = np.fromiter(map(itemgetter(0), values), dtype=np.float64,
                                           count=self.n).reshape(self.n, 1)
                    return self._lr
                self._lr = np.array(values, dtype=np.float64).reshape(self.n, width)
                return self._lr
            except (TypeError, ValueError, OverflowError):
                pass
        rows = []
        for i, v in enumerate(values):
            if isinstance(v, list) and len(v) == width:
                rows.append(v)
            elif v is not None and not isinstance(v, list) and width == 1:
                rows.append([v])
            else:
                if not (v is None and width == 0):
                    self.irregular[i] = True
                rows.append([np.nan] * width)
        try:
            out = np.array(rows, dtype=np.float64).reshape(self.n, width)
        except (TypeError, ValueError, OverflowError):
            out = np.array([[_to_float(x, self.irregular, i) for x in r] for i, r in enumerate(rows)],
                           dtype=np.float64).reshape(self.n, width)
        self._lr = out
        return out

    def _floats(self, values: list[Any], *, allow_none: bool) -> np.ndarray:
        try:
            out = np.array(values, dtype=np.float64)
            if out.ndim == 1:
                if not allow_none:  # null in a mapping is dropped by the record path: irregular
                    none = np.array([v is None for v in values], dtype=bool) if np.isnan(out).any() else None
                    if none is not None:
                        self.irregular |= none
                return out
        except (TypeError, ValueError, OverflowError):
            pass
        irregular = self.irregular
        return np.array([_to_float(v, irregular, i, allow_none) for i, v in enumerate(values)], dtype=np.float64)


def _values(lines: Sequence[Any], key: str, default: Any = None) -> list[Any]:
    """``line.get(key, default)`` of every line: one C loop for plain dicts."""
    try:
        return list(map(dict.get, lines, repeat(key), repeat(default)))
    except TypeError:  # some other Mapping
        return [line.get(key, default) for line in lines]


def _to_float(v: Any, irregular: np.ndarray, i: int, allow_none: bool = True) -> float:
    if v is None and allow_none:
        return float("nan")
    if type(v) in (int, float):
        try:
            return float(v)
        except OverflowError:  # an int no float holds: the record path raises for the row
            pass
    irregular[i] = True  # bool, str, list, missing...: the record path decides what it means
    return float("nan")


__all__ = ["KIND_CODES", "KIND_NAMES", "MAPPINGS", "SCALARS", "MetricBlock"]

"""Reading a Lightning `CSVLogger` metrics.csv as it grows.

The logger appends one row per `log_metrics` call, so one step's loss and its learning
rate (from `LearningRateMonitor`) arrive on separate rows, most cells empty. When a new
metric name appears it rewrites the whole file with a wider header: the tailer sees the
start of the file change and restarts, and the rows already judged are skipped by count
(the rewrite keeps them, in order, with extra empty cells).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator

from .keys import KeyMap
from .tail import TOO_LONG, BadLine, LineTail, too_long


def _cell(text: str) -> float | None:
    if text == "":
        return None
    return float(text)  # accepts "nan", "inf", "1e-3"


class CsvMetricsTail:
    """Yields metrics lines (docs/run-dir.md schema) for the rows appended to a metrics.csv."""

    def __init__(self, path: str | os.PathLike, keys: KeyMap | None = None) -> None:
        self._lines = LineTail(path)
        self.keys = keys or KeyMap()
        self._header: list[str] | None = None
        self._rows_done = 0  # data rows handed out, kept across a header rewrite
        self._rows_seen = 0  # data rows of the current file version
        self._lr: list[float] = []  # the latest learning rates: they arrive on their own rows
        self.missing_keys: list[str] = []

    @property
    def path(self) -> str:
        return self._lines.path

    @property
    def status(self):
        return self._lines.status

    @property
    def line_no(self) -> int:
        """The file line of the row last handed out: a row that then fails to become a
        record is reported there, not at the count of rows before it."""
        return self._lines.line_no

    @property
    def header(self) -> list[str] | None:
        return self._header

    def poll(self) -> Iterator[dict | BadLine]:
        for line_no, raw in self._lines.poll():
            if raw.startswith(TOO_LONG):
                yield too_long(self.path, line_no, raw)
                continue
            if line_no == 1:
                try:
                    self._start(raw)
                except csv.Error as err:  # binary or garbled: no columns to read rows by
                    self._header = None
                    yield BadLine(self.path, line_no, f"not a CSV header ({err})",
                                  raw[:80].decode("utf-8", "replace"))
                continue
            if self._header is None or not raw.strip():
                continue
            self._rows_seen += 1
            if self._rows_seen <= self._rows_done:
                continue  # already judged before the logger rewrote the file
            self._rows_done += 1
            try:
                row = self._parse(raw)
            except (ValueError, csv.Error) as err:
                yield BadLine(self.path, line_no, f"not a CSV row of {len(self._header)} "
                              f"columns ({err})", raw[:80].decode("utf-8", "replace"))
                continue
            yield from self._to_lines(row)

    def close(self) -> None:
        self._lines.close()

    # ------------------------------------------------------------------------------
    def _start(self, raw: bytes) -> None:
        self._header = next(csv.reader([raw.decode("utf-8", "replace").rstrip("\r")]))
        self._rows_seen = 0
        self.missing_keys = self.keys.missing(self._header)

    def _parse(self, raw: bytes) -> dict[str, float | None]:
        cells = next(csv.reader([raw.decode("utf-8").rstrip("\r")]))
        if len(cells) != len(self._header):
            raise ValueError(f"got {len(cells)}")
        return {name: _cell(c) for name, c in zip(self._header, cells)}

    def _to_lines(self, row: dict[str, float | None]) -> Iterator[dict]:
        keys = self.keys
        lrs = keys.lrs(row)
        if lrs:
            self._lr = lrs
        step_key = keys.step_key(row)
        epoch_key = keys.epoch_key(row)
        step = row.get(step_key) if step_key else None
        epoch = row.get(epoch_key) if epoch_key else None
        step = int(step) if step is not None and math.isfinite(step) else self._rows_done - 1
        epoch = int(epoch) if epoch is not None and math.isfinite(epoch) else None
        yield from keys.to_lines(row, step=step, epoch=epoch, time=row.get("time"), lr=self._lr)

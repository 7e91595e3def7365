"""Choosing the reader for a run directory.

`watch` and `report` accept a run dir written by our own loop (metrics.jsonl), by
Lightning's CSVLogger (metrics.csv, possibly under `version_N/`), or by a TensorBoard
SummaryWriter (events.out.tfevents.*). `open_metrics` picks one and returns a tailer
whose `poll()` yields metrics lines of docs/run-dir.md or `BadLine`s, whatever the format.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from typing import Protocol

from .errors import RunLogError, stat_regular
from .keys import KeyMap
from .lightning_csv import CsvMetricsTail
from .tail import BadLine, FileStatus, JsonLinesTail
from .tensorboard import TensorBoardTail, find_event_files

FORMATS = ("auto", "jsonl", "csv", "tensorboard")
METRICS_FILE = "metrics.jsonl"
HEALTH_FILE = "health.jsonl"
CSV_FILE = "metrics.csv"
_VERSION = re.compile(r"version_(\d+)")  # CSVLogger's folder per run of one experiment


class MetricsTail(Protocol):
    path: str

    def poll(self) -> Iterator[dict | BadLine]: ...

    def close(self) -> None: ...


def csv_logs(run_dir: str) -> list[str]:
    """The metrics.csv files `run_dir` holds for watch, newest first (most recently
    written; the higher version number breaks a tie).

    Its own metrics.csv if it has one; else CSVLogger's layout from either folder a user
    may hold: the logger's ``save_dir/name`` (``version_N/metrics.csv`` below it) or its
    ``save_dir`` (``name/version_N/metrics.csv``).
    """
    direct = os.path.join(run_dir, CSV_FILE)
    if os.path.isfile(direct):
        return [direct]
    for pattern in (("*", CSV_FILE), ("*", "*", CSV_FILE)):
        found = [p for p in glob.glob(os.path.join(glob.escape(run_dir), *pattern)) if os.path.isfile(p)]
        if found:
            return sorted(found, key=_newest, reverse=True)
    return []


def _newest(path: str) -> tuple[float, int]:
    version = _VERSION.fullmatch(os.path.basename(os.path.dirname(path)))
    return os.path.getmtime(path), int(version.group(1)) if version else -1


def _find_csv(run_dir: str) -> str | None:
    logs = csv_logs(run_dir)
    return logs[0] if logs else None


def detect_format(run_dir: str) -> str:
    """The format of the metrics in `run_dir`: "jsonl", "csv" or "tensorboard"."""
    jsonl = os.path.join(run_dir, METRICS_FILE)
    if os.path.lexists(jsonl) and stat_regular(jsonl) is not None:  # not regular: a RunLogError
        return "jsonl"
    if _find_csv(run_dir):
        return "csv"
    if find_event_files(run_dir):
        return "tensorboard"
    raise RunLogError(
        f"run dir {run_dir!r} holds no metrics.jsonl, metrics.csv or "
        f"events.out.tfevents.* file; pass the folder a training run writes to")


def open_metrics(run_dir: str | os.PathLike, fmt: str = "auto",
                 keys: KeyMap | None = None) -> MetricsTail:
    """A tailer over the run's metrics; `fmt="jsonl"` also works before the file exists."""
    run_dir = os.fspath(run_dir)
    if fmt not in FORMATS:
        raise RunLogError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(run_dir)
    if fmt == "jsonl":
        return JsonLinesTail(os.path.join(run_dir, METRICS_FILE))
    if fmt == "csv":
        path = _find_csv(run_dir)
        if path is None:
            raise RunLogError(f"run dir {run_dir!r} holds no metrics.csv (nor version_*/metrics.csv "
                              f"or */version_*/metrics.csv)")
        return CsvMetricsTail(path, keys)
    if not find_event_files(run_dir):
        raise RunLogError(f"run dir {run_dir!r} holds no events.out.tfevents.* file")
    return TensorBoardTail(run_dir, keys)


def open_health(run_dir: str | os.PathLike) -> JsonLinesTail:
    """A tailer over health.jsonl; yields nothing while the file does not exist."""
    return JsonLinesTail(os.path.join(os.fspath(run_dir), HEALTH_FILE))


__all__ = ["FORMATS", "RunLogError", "MetricsTail", "FileStatus", "check_readable", "csv_logs",
           "detect_format", "open_metrics", "open_health"]


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

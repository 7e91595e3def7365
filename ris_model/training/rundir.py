"""Writing a run directory (docs/run-dir.md): config.json, metrics.jsonl, checkpoints.

Metrics lines are appended and flushed one at a time, so a reader (``healthcheck watch``)
sees a step as soon as it is taken and a crash loses at most the line being written.
Checkpoints go to a temporary file first and are renamed into place: a run killed while
saving leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

METRICS_SCHEMA = 1


def _finite_or_token(obj: Any) -> Any:
    """Tensors and numpy scalars to plain Python; JSON keeps NaN/Infinity as tokens."""
    if isinstance(obj, dict):
        return {k: _finite_or_token(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_token(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj


class MetricsFile:
    """Appends one JSON object per line to metrics.jsonl and flushes it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, line: dict[str, Any]) -> None:
        line = {"schema": METRICS_SCHEMA, **_finite_or_token(line)}
        self._fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class RunDir:
    """The files of one run. Only rank 0 writes (``writer=False`` elsewhere)."""

    def __init__(self, path: str | Path, *, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.checkpoints = self.path / "checkpoints"
        self.metrics: MetricsFile | None = None
        if writer:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.metrics = MetricsFile(self.path / "metrics.jsonl")

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def write_config(self, blob: dict[str, Any]) -> None:
        if self.writer:
            atomic_write_text(self.config_path, json.dumps(blob, indent=2, sort_keys=True))

    def log(self, line: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(line)

    def save_checkpoint(self, state: dict[str, Any], name: str) -> Path | None:
        if not self.writer:
            return None
        target = self.checkpoints / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, target)
        return target

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A run directory is data, never code: ``weights_only=True`` refuses pickled objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def now() -> float:
    return time.time()


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

"""Writing a run directory (docs/run-dir.md): config.json, metrics.jsonl, checkpoints.

Metrics lines are appended and flushed one at a time, so a reader (``healthcheck watch``)
sees a step as soon as it is taken and a crash loses at most the line being written.
Checkpoints go to a temporary file first and are renamed into place: a run killed while
saving leaves the previous checkpoint intact, never a half-written one. Nothing is ever
written through a symbolic link found in the run directory (`ris_model.safe_files`).

Reading one back is reading data from anywhere: a checkpoint or config.json that is
empty, truncated, foreign or of another shape is a `RunFileError` that names the file
and what is wrong, never a traceback from deep inside torch or the config builder.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from ris_model.config import Config, ConfigError
from ris_model.safe_files import open_append, real_dir, writable_dir, write_atomic, write_failure

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
    """Appends one JSON object per line to metrics.jsonl and flushes it at once.

    A file that ends in a torn line (a run killed mid-write) first gets its newline, so
    the first new line is not glued to the fragment and lost with it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open_append(path)
        try:
            end = self._fh.seek(0, os.SEEK_END)
            if end > 0:
                self._fh.seek(end - 1)
                if self._fh.read(1) != b"\n":
                    self._fh.write(b"\n")
                    self._fh.flush()
        except OSError as exc:
            self._fh.close()
            raise write_failure(path, exc) from None

    def write(self, line: dict[str, Any]) -> None:
        line = {"schema": METRICS_SCHEMA, **_finite_or_token(line)}
        try:
            self._fh.write(json.dumps(line, separators=(",", ":")).encode("utf-8") + b"\n")
            self._fh.flush()
        except OSError as exc:
            raise write_failure(self.path, exc) from None

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError as exc:
                raise write_failure(self.path, exc) from None


class RunDir:
    """The files of one run. Only rank 0 writes (``writer=False`` elsewhere)."""

    def __init__(self, path: str | Path, *, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.checkpoints = self.path / "checkpoints"
        self.metrics: MetricsFile | None = None
        if writer:
            prepare_run_dir(self.path)
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
        real_dir(self.checkpoints)  # still a folder of this run, not a link planted since
        write_atomic(target, lambda fh: torch.save(state, fh))
        return target

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def prepare_run_dir(path: str | Path) -> None:
    """Check every destination of a run now, not after the first epoch's work: the run
    dir and its ``checkpoints/`` take new files, neither ``checkpoints/`` nor an existing
    metrics.jsonl is a link. Raises `RunWriteError` with one sentence."""
    path = Path(path)
    writable_dir(path)
    writable_dir(path / "checkpoints", own=True)
    metrics = path / "metrics.jsonl"
    if metrics.is_symlink() or (metrics.exists() and not metrics.is_file()):
        open_append(metrics).close()  # raises the sentence that says which


def atomic_write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


class RunFileError(ConfigError):
    """A file of a run directory that cannot be used as it is; the message names it and
    says what is wrong (a user error: exit 2)."""


# what a checkpoint must hold to resume a run, and to evaluate one
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "trainer", "rng", "loss_weights",
               "weight_sources", "weights_history")
EVAL_KEYS = ("model",)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = EVAL_KEYS) -> dict[str, Any]:
    """A run directory is data, never code: ``weights_only=True`` refuses pickled objects.

    Every way a file can fail to be one of our checkpoints ends in `RunFileError`.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise RunFileError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    if size == 0:
        raise RunFileError(f"checkpoint {path} is empty (0 bytes): it was never completely written; "
                           f"use the other checkpoint or train again")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise RunFileError(f"checkpoint {path} holds Python objects other than tensors and plain values; "
                               f"it was refused because loading it could run code, and ris-model never "
                               f"writes such checkpoints") from None
        raise RunFileError(f"checkpoint {path} is not a PyTorch checkpoint (corrupted or foreign: "
                           f"{_first_line(exc)})") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, KeyError, IndexError,
            TypeError, AttributeError, OverflowError, MemoryError) as exc:
        raise RunFileError(f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or corrupted: "
                           f"{_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise RunFileError(f"checkpoint {path} holds a {type(state).__name__}, not a ris-model checkpoint "
                           f"(a dict with {', '.join(required)})")
    missing = [k for k in required if k not in state]
    if missing:
        raise RunFileError(f"checkpoint {path} is not a ris-model checkpoint: it lacks {', '.join(missing)}")
    return state


def load_weights(model: torch.nn.Module, weights: Any, path: str | Path, what: str = "model") -> None:
    """``model.load_state_dict(weights)``, or a `RunFileError` saying why the checkpoint's
    weights do not fit this run's config (missing or unexpected tensors, other shapes)."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise RunFileError(f"checkpoint {path}: '{what}' is not a table of tensors")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise RunFileError(f"checkpoint {path} does not fit this run's model ({_first_line(exc, 200)}); "
                           f"was it written with another config?") from None


MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few KiB; a larger one is not ours


def read_run_config(path: str | Path) -> Config:
    """The Config in a run's config.json, or a `RunFileError` naming what is wrong with it."""
    path = Path(path)
    try:
        if not path.is_file():
            raise RunFileError(f"{path} is not a regular file; a run's config.json is one")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise RunFileError(f"{path} holds {path.stat().st_size:,} bytes, far more than any config.json "
                               f"(at most {MAX_CONFIG_BYTES:,}); it is not a ris-model config")
        raw = path.read_bytes()
    except OSError as exc:
        raise RunFileError(f"cannot read {path}: {exc.strerror}") from None
    if not raw.strip():
        raise RunFileError(f"{path} is empty; it was never completely written (restore it or train again)")
    try:
        blob = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFileError(f"{path} is not UTF-8 text, so not a ris-model config.json") from None
    except (ValueError, RecursionError) as exc:
        raise RunFileError(f"{path} is not valid JSON ({_first_line(exc)}); restore it or train again") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("config"), dict):
        raise RunFileError(f"{path} is not a ris-model config.json: it has no 'config' table")
    if not isinstance(blob.get("sources", {}), dict):
        raise RunFileError(f"{path} is not a ris-model config.json: 'sources' is not a table")
    try:
        return Config.from_json(blob)
    except ConfigError as exc:
        raise RunFileError(f"{path}: {exc}") from None
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise RunFileError(f"{path} does not hold a valid config ({_first_line(exc)})") from None


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def now() -> float:
    return time.time()


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

"""Weights & Biases logging that can never stop training.

There is often no W&B server (laptops, CI, air-gapped clusters), so the default mode is
``offline`` unless the user set ``WANDB_MODE``; ``off`` (or ``RIS_MODEL_WANDB=off``, or
``WANDB_MODE=disabled``) switches W&B off entirely. Every call into wandb is guarded: the
first failure is reported once and logging is switched off, training goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ris_model.training.callbacks import Callback, Metrics

MODES = ("off", "offline", "online")


def resolve_mode(requested: str | None) -> str:
    """CLI flag > RIS_MODEL_WANDB > WANDB_MODE > offline."""
    mode = requested or os.environ.get("RIS_MODEL_WANDB") or os.environ.get("WANDB_MODE") or "offline"
    mode = {"disabled": "off", "dryrun": "offline", "false": "off", "0": "off"}.get(mode.lower(), mode.lower())
    if mode not in MODES:
        raise ValueError(f"unknown W&B mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(name, value))
        elif isinstance(value, (list, tuple)):
            out.update({f"{name}/{i}": v for i, v in enumerate(value) if isinstance(v, (int, float))})
        elif isinstance(value, (int, float, bool)):
            out[name] = value
    return out


class WandbLogger(Callback):
    """Logs step and eval lines, the config and per-term losses to one W&B run.

    A Trainer callback: put it first in the list, so that every step is logged before any
    other callback can stop the run on it. ``finish`` is the caller's, who knows the exit code.
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any], *, mode: str = "offline",
                 project: str = "ris-model", name: str | None = None,
                 warn: Callable[[str], None] = print) -> None:
        self.warn = warn
        self.run: Any = None  # a wandb Run while logging
        self.mode = mode
        if mode == "off":
            return
        self._guard("start", lambda: self._init(Path(run_dir), config, project, name))

    def _init(self, run_dir: Path, config: dict[str, Any], project: str, name: str | None) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name or run_dir.name, dir=str(run_dir),
                              mode=self.mode,  # type: ignore[arg-type]  # resolve_mode checked it
                              config=config, reinit="finish_previous")

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # W&B must never take training down with it
            self.warn(f"W&B {what} failed ({type(exc).__name__}: {exc}); W&B logging is off for this run")
            self.run = None
            return None

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            run = self.run
            self._guard("log", lambda: run.log(values, step=step))

    def log_step(self, line: dict[str, Any]) -> None:
        if self.run is None:
            return
        values = {
            "train/loss": line["loss"],
            **flatten("train/term", line.get("terms", {})),
            **flatten("train/weight", line.get("weights", {})),
            **flatten("train/lr", {"group": line.get("lr", [])}),
            **flatten("train/grad_norm", line.get("grad_norm", {})),
            "epoch": line["epoch"],
        }
        self.log(values, step=line["step"])

    def log_eval(self, line: dict[str, Any]) -> None:
        if self.run is None:
            return
        values = {
            "val/loss": line["loss"],
            **flatten("val/term", line.get("terms", {})),
            **flatten("val", line.get("metrics", {})),
            "epoch": line["epoch"],
        }
        self.log(values, step=line["step"])

    def on_after_optimizer_step(self, trainer: Any, metrics: Metrics) -> None:
        """Called after every optimizer step (or skipped step): one W&B step."""
        self.log_step(metrics)

    def on_validation_end(self, trainer: Any, metrics: Metrics) -> None:
        """Called after validation: the validation loss, terms and metrics."""
        self.log_eval(metrics)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run = self.run
            self._guard("finish", lambda: run.finish(exit_code=exit_code))
            self.run = None

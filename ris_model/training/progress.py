"""Training progress a person can watch: a rich bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any

from ris_model.training.callbacks import Callback

MAIN_TERMS = 3  # the bar shows the loss and this many terms, largest weighted share first


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


class ProgressCallback(Callback):
    """Shows epoch, step, loss, the main terms and the LR; the validation loss per epoch."""

    def __init__(self, console: Any = None, plain: bool | None = None, every_s: float = 5.0) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self.every_s = every_s
        self._last_print = 0.0
        self._progress: Any = None  # a rich Progress once the fit starts on a terminal
        self._task: Any = None

    def on_fit_start(self, trainer):
        total = trainer.total_steps
        if self.plain:
            self.console.print(f"training {total} steps ({trainer.cfg.train.epochs} epochs)", highlight=False)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                  MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                                  console=self.console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=trainer.state.batches_seen,
                                             epoch=trainer.state.epoch, stats="")

    def _stats(self, metrics: dict[str, Any]) -> str:
        terms, weights = metrics.get("terms", {}), metrics.get("weights", {})
        shares = sorted(terms, key=lambda t: -abs(weights.get(t, 0.0) * terms[t]))[:MAIN_TERMS]
        parts = [f"loss {_fmt(metrics['loss'])}"] + [f"{t} {_fmt(terms[t])}" for t in shares]
        if metrics.get("lr"):
            parts.append(f"lr {metrics['lr'][0]:.2e}")
        return "  ".join(parts)

    def on_after_optimizer_step(self, trainer, metrics):
        stats = self._stats(metrics)
        if self._progress is not None:
            self._progress.update(self._task, completed=trainer.state.batches_seen, epoch=trainer.state.epoch,
                                  stats=stats)
        elif time.monotonic() - self._last_print >= self.every_s:
            self._last_print = time.monotonic()
            self.console.print(f"epoch {trainer.state.epoch} step {trainer.state.batches_seen}/{trainer.total_steps}  "
                               f"{stats}", highlight=False, soft_wrap=True)

    def on_validation_end(self, trainer, metrics):
        text = f"epoch {metrics['epoch']}  val loss {_fmt(metrics['loss'])}"
        extra = metrics.get("metrics") or {}
        if "rmse_phi_deg" in extra:
            text += f"  RMSE φ {extra['rmse_phi_deg']:.2f}°  θ {extra['rmse_theta_deg']:.2f}°"
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False)

    def on_fit_end(self, trainer):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def is_terminal() -> bool:
    return sys.stderr.isatty()

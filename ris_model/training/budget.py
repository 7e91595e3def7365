"""Stop a training run before its CPU time passes a budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ris_model.training.callbacks import Callback, Metrics
from ris_model.training.stop import StopReason

if TYPE_CHECKING:
    from ris_model.training.train import Trainer


class CpuBudget(Callback):
    """Stops training cleanly when another epoch would take its CPU time past ``seconds``.

    An epoch count chosen for a budget is a forecast from a short probe; on a shared
    machine every epoch can cost more than the probe's, and the budget is the promise. The
    next epoch is assumed to cost what the last one did, so the run ends under the budget
    rather than one epoch past it. ``start`` is the clock reading the budget counts from
    (default: fit start; pass one taken before building the Trainer to count its set-up).
    The clock is process time by default: what this process used, whatever else runs.
    For one process: under DDP each rank would judge its own clock, and the Trainer agrees
    on stops only between steps, so ranks could part at an epoch boundary.
    """

    def __init__(self, seconds: float, *, start: float | None = None,
                 clock: Callable[[], float] = time.process_time) -> None:
        if not seconds > 0:
            raise ValueError(f"the CPU budget must be positive but got {seconds=}")
        self.seconds = float(seconds)
        self.clock = clock
        self.start = start
        self._last: float | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        now = self.clock()
        if self.start is None:
            self.start = now
        self._last = now

    def on_validation_end(self, trainer: Trainer, metrics: Metrics) -> None:
        now = self.clock()
        start = now if self.start is None else self.start  # on_fit_start ran first in a fit
        epoch = now - (start if self._last is None else self._last)
        self._last = now
        used = now - start
        last_planned = trainer.state.epoch + 1 >= trainer.cfg.train.epochs  # nothing left to stop
        if used + epoch > self.seconds and not last_planned:
            trainer.request_stop(f"{used:.0f} s of {self.seconds:.0f} s used, "
                                 f"and the last epoch took {epoch:.0f} s", StopReason.BUDGET)


__all__ = ["CpuBudget"]

"""The Trainer's callback interface: every hook is a no-op that says exactly when it fires.

A callback observes through ``metrics`` (one dict per docs/run-dir.md, the same thing
that goes to metrics.jsonl) and acts through the trainer: ``trainer.request_stop(message,
StopReason.X)`` asks for a clean stop (checkpoint + final line) at the next safe point, and
``on_before_optimizer_step`` may veto one step by returning the reason as a string.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ris_model.batches import TrainingScenes
    from ris_model.loss import CovPrediction, LossOutput
    from ris_model.training.train import Trainer

Metrics = dict[str, Any]


class Callback:
    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once after the model, optimizer and data are built, before the first batch."""

    def on_batch_start(self, trainer: Trainer, batch_index: int) -> None:
        """Called before the forward pass of every batch."""

    def on_before_backward(self, trainer: Trainer, batch: TrainingScenes, prediction: CovPrediction,
                           out: LossOutput) -> None:
        """Called after a training batch's forward pass and loss, before backward: the batch, the
        model's prediction (still attached to its graph) and the loss. Read them; change nothing."""

    def on_after_backward(self, trainer: Trainer, metrics: Metrics) -> None:
        """Called after loss.backward() (gradients unscaled and present), before clipping and the optimizer step."""

    def on_before_optimizer_step(self, trainer: Trainer, metrics: Metrics) -> str | None:
        """Called right before optimizer.step(); return a reason string to skip this one step."""
        return None

    def on_after_optimizer_step(self, trainer: Trainer, metrics: Metrics) -> None:
        """Called after the optimizer and LR scheduler stepped (or the step was skipped),
        with update norms filled in."""

    def on_epoch_end(self, trainer: Trainer, metrics: Metrics) -> None:
        """Called after the last batch of an epoch, with the epoch's mean loss and terms."""

    def on_validation_end(self, trainer: Trainer, metrics: Metrics) -> None:
        """Called after validation, with the validation loss, terms and localisation metrics."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called once when fitting ends for any reason (done, stop requested, interrupted)."""


class CallbackList(Callback):
    """Fans every hook out to its callbacks in order; vetoes are joined."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_fit_start(self, trainer):
        for cb in self.callbacks:
            cb.on_fit_start(trainer)

    def on_batch_start(self, trainer, batch_index):
        for cb in self.callbacks:
            cb.on_batch_start(trainer, batch_index)

    def on_before_backward(self, trainer, batch, prediction, out):
        for cb in self.callbacks:
            cb.on_before_backward(trainer, batch, prediction, out)

    def on_after_backward(self, trainer, metrics):
        for cb in self.callbacks:
            cb.on_after_backward(trainer, metrics)

    def on_before_optimizer_step(self, trainer, metrics):
        reasons = [r for r in (cb.on_before_optimizer_step(trainer, metrics) for cb in self.callbacks) if r]
        return "; ".join(reasons) or None

    def on_after_optimizer_step(self, trainer, metrics):
        for cb in self.callbacks:
            cb.on_after_optimizer_step(trainer, metrics)

    def on_epoch_end(self, trainer, metrics):
        for cb in self.callbacks:
            cb.on_epoch_end(trainer, metrics)

    def on_validation_end(self, trainer, metrics):
        for cb in self.callbacks:
            cb.on_validation_end(trainer, metrics)

    def on_fit_end(self, trainer):
        for cb in self.callbacks:
            cb.on_fit_end(trainer)

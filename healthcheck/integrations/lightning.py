"""Health checks for a Lightning ``Trainer``: ``Trainer(callbacks=[HealthCallback("runs/x")])``.

Importing this module does not import Lightning; using ``HealthCallback`` does, and
raises a clear ImportError if neither ``lightning`` nor ``pytorch_lightning`` is installed.

Where each phase is judged:

* ``on_before_backward`` / ``on_after_backward``: the loss and the terms of each batch are
  summed (no sync).
* ``on_before_optimizer_step``: "after_backward" — gradients are complete (accumulated,
  and unscaled by Lightning's AMP plugin), the step has not happened. With
  ``accumulate_grad_batches=N`` this is one record for N batches: its loss is their mean
  (Lightning back-propagates each batch's loss divided by N), its terms their mean, and
  step numbers count optimizer steps, as ``trainer.global_step`` does.
* ``on_train_batch_end``: "after_step" for batches that ended with an optimizer step.
* ``on_train_epoch_end``: "epoch"; ``on_validation_epoch_end``: "eval", reading the
  validation loss from ``trainer.callback_metrics[val_loss_key]``.

Loss terms and weights: a LightningModule may set ``self.health_terms`` /
``self.health_weights`` (dicts, tensors allowed) in ``training_step``; they are read at
each backward and averaged over the batches of one optimizer step. A stop sets
``trainer.should_stop`` (any rank stopping stops all).

Baselines: a module may set ``self.health_baselines`` ({"val_loss": 0.69, "val_acc": 0.5}:
what a constant predictor or a classical method scores on the same validation data) and
``self.health_higher_is_better`` ({"val_acc"}); they are read at each validation end and
judged by ``val.below_baseline``.

Probes (`TrainingHealth.before_backward`): a module that also sets ``self.health_output``
(the model's output tensor, still attached to its graph) in ``training_step`` gets the
term-reach probe at ``on_before_backward``, and with ``self.health_targets`` and
``self.health_pairing_loss`` (``loss(output, targets)``) the data-pairing probe. Gradients
not cleared between steps are watched for every module, without any attribute.
"""

from __future__ import annotations

import math
import os
from typing import Any

_MISSING = ("HealthCallback needs Lightning: `pip install lightning` (or pytorch-lightning); "
            "healthcheck itself does not depend on it")


def _callback_base() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback  # type: ignore[assignment]
        except ImportError:
            raise ImportError(_MISSING) from None
    return Callback


def _logged_step(trainer: Any) -> int:
    """The step Lightning's loggers stamp epoch-end results with: the index of the last
    optimizer step (global_step counts them), so an eval line in metrics.jsonl and the
    CSVLogger's row for it name the same step."""
    return max(int(trainer.global_step) - 1, 0)


def _build() -> type:
    from .torch_loop import TrainingHealth

    class HealthCallback(_callback_base()):  # type: ignore[misc]  # Lightning's, found at run time
        """Runs a `TrainingHealth` inside a Lightning fit. Arguments as for `TrainingHealth`,
        plus ``val_loss_key`` and the names of the module attributes carrying terms and
        weights. Only rank 0 writes files and prints."""

        def __init__(self, run_dir: str | os.PathLike | None = None, *, val_loss_key: str = "val_loss",
                     terms_attr: str = "health_terms", weights_attr: str = "health_weights",
                     **health_kwargs: Any) -> None:
            super().__init__()
            self.run_dir = run_dir
            self.val_loss_key = val_loss_key
            self.terms_attr = terms_attr
            self.weights_attr = weights_attr
            self.health_kwargs = health_kwargs
            self.health: TrainingHealth | None = None
            self._loss: Any = None  # Σ of this step's back-propagated (already 1/N-scaled) losses
            self._terms: dict[str, Any] = {}  # Σ of each term over this step's batches
            self._backwards = 0

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            """Called when fit begins: optimizers exist now."""
            if not trainer.optimizers:
                raise RuntimeError("HealthCallback needs an optimizer; configure_optimizers returned none")
            rank0 = trainer.global_rank == 0
            kwargs = dict(self.health_kwargs)
            if not rank0:
                kwargs["sinks"] = []
            kwargs.setdefault("scaler", getattr(trainer.precision_plugin, "scaler", None))
            kwargs.setdefault("total_steps", _planned_steps(trainer))
            self.health = TrainingHealth(pl_module, trainer.optimizers[0],
                                         self.run_dir if rank0 else None, rank=trainer.global_rank,
                                         **kwargs)

        def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
            """Called before loss.backward(): add the loss to this step's (detached, no sync)
            and run the probes on the output the module left in ``health_output``, if any."""
            self._loss = loss.detach() if self._loss is None else self._loss + loss.detach()
            output = getattr(pl_module, "health_output", None)
            if self.health is not None and output is not None:
                self.health.before_backward(
                    output, terms=getattr(pl_module, self.terms_attr, None),
                    weights=getattr(pl_module, self.weights_attr, None),
                    targets=getattr(pl_module, "health_targets", None),
                    loss_fn=getattr(pl_module, "health_pairing_loss", None))
                pl_module.health_output = None  # the graph is the step's, not the module's

        def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
            """Called after loss.backward(): count the batch and add its terms."""
            self._backwards += 1
            for name, value in (getattr(pl_module, self.terms_attr, None) or {}).items():
                value = value.detach() if hasattr(value, "detach") else value
                self._terms[name] = value if name not in self._terms else self._terms[name] + value

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            """Called before optimizer.step(): judge gradients while a stop can still help."""
            if self.health is None or self._loss is None:
                return
            n = max(self._backwards, 1)
            terms = {name: value / n for name, value in self._terms.items()} or None
            loss, self._loss, self._terms, self._backwards = self._loss, None, {}, 0
            self.health.after_backward(loss, terms=terms, weights=getattr(pl_module, self.weights_attr, None),
                                       batches=n)
            self._sync_stop(trainer)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            """Called after the batch (and its optimizer step, if it had one)."""
            if self.health is not None and self.health._pending is not None:
                self.health.after_step()
                self._sync_stop(trainer)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            """Called at the end of each training epoch."""
            if self.health is not None:
                self.health.end_epoch(step=_logged_step(trainer))
                self._sync_stop(trainer)

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            """Called after validation; skipped during the sanity check."""
            if self.health is None or trainer.sanity_checking:
                return
            metrics = trainer.callback_metrics
            val = metrics.get(self.val_loss_key)
            if val is None:
                return
            extra = {k: v for k, v in metrics.items() if k != self.val_loss_key and k.startswith("val")}
            baselines = dict(getattr(pl_module, "health_baselines", None) or {})
            if self.val_loss_key in baselines:  # the record calls the validation loss "loss"
                baselines["loss"] = baselines.pop(self.val_loss_key)
            self.health.evaluate(val, metrics=extra, step=_logged_step(trainer), baselines=baselines,
                                 higher_is_better=getattr(pl_module, "health_higher_is_better", ()))
            self._sync_stop(trainer)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            """Called when fit ends: write the summary and close files."""
            if self.health is not None:
                self.health.close()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            """Called when fit raises: record ``run.crashed``, then close the files cleanly."""
            if self.health is not None:
                self.health.record_crash(exception)
                self.health.close()

        def _sync_stop(self, trainer: Any) -> None:
            stop = bool(self.health is not None and self.health.should_stop)
            if trainer.world_size > 1:
                stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                trainer.should_stop = True

    return HealthCallback


def __getattr__(name: str) -> Any:
    if name == "HealthCallback":
        cls = _build()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _planned_steps(trainer: Any) -> int | None:
    """The optimizer steps Lightning plans for this fit, or None where it cannot tell
    (an iterable dataset without max_steps gives inf)."""
    try:
        steps = float(trainer.estimated_stepping_batches)
    except Exception:  # noqa: BLE001 - an estimate that cannot be made leaves the length unknown
        return None
    return int(steps) if math.isfinite(steps) and steps >= 1 else None


__all__ = ["HealthCallback"]  # noqa: F822 (made on first use by __getattr__)

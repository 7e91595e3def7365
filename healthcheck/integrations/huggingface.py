"""Health checks for a Hugging Face ``transformers.Trainer``:
``Trainer(..., callbacks=[HealthCallback("runs/x")])``.

Importing this module does not import transformers; using ``HealthCallback`` does, and
raises a clear ImportError if transformers (4.42 or later, the release whose Trainer calls
``on_pre_optimizer_step``) is not installed.

Where each phase is judged:

* a forward hook on the model keeps the loss of every training batch (no sync);
  ``on_substep_end`` counts the batches a step accumulates.
* ``on_pre_optimizer_step``: "after_backward" with the step's loss (the mean of its
  batches' losses, or their sum when the model normalises by the step's token count,
  ``num_items_in_batch``), learning rates and gradient norms. The Trainer clips gradients
  just before this hook, so with ``max_grad_norm > 0`` (1.0 by default) the norms judged
  are the clipped ones: a NaN, a missing or dead gradient is seen as it is, an explosion
  only as the clip's ceiling.
* ``on_optimizer_step``: "after_step"; ``on_epoch_end``: "epoch"; ``on_evaluate``: "eval",
  from ``metrics["eval_loss"]`` and the other ``eval_*`` numbers. Numbers that
  ``compute_metrics`` returns as ``baseline_<name>`` (``baseline_max_<name>`` when higher
  is better) are baselines for ``eval_<name>`` (``baseline_loss``: for the loss), judged by
  ``val.below_baseline``.

A stop sets ``control.should_training_stop``; a stop decided on the gradients also
clears them, so the optimizer step that follows changes nothing. Step numbers count
optimizer steps, as ``state.global_step`` does. Only the main process writes files.
"""

from __future__ import annotations

import os
from typing import Any

_MISSING = ("HealthCallback needs transformers 4.42 or later: `pip install 'ris-health[hf]'` "
            "(healthcheck itself does not depend on it)")


def _callback_base() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError(_MISSING) from None
    if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
        raise ImportError(_MISSING)
    return TrainerCallback


def _loss_of(output: Any) -> Any:
    """The loss a model's forward returned: ``output.loss``, ``output["loss"]`` or None."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    return loss


def _take_baselines(metrics: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Move the baselines out of an evaluation's metrics: ``eval_baseline_<name>`` (lower is
    better) and ``eval_baseline_max_<name>`` (higher is better), as ``compute_metrics``
    returns them under ``baseline_<name>``, declare a baseline for ``eval_<name>``, or for
    the validation loss when the name is ``loss``."""
    baselines, higher = {}, set()
    for key in [k for k in metrics if k.startswith("eval_baseline_")]:
        name = key[len("eval_baseline_"):]
        is_max = name.startswith("max_")
        name = name[len("max_"):] if is_max else name
        name = name if name == "loss" else f"eval_{name}"
        baselines[name] = metrics.pop(key)
        if is_max:
            higher.add(name)
    return baselines, higher


def _build() -> type:
    from .torch_loop import TrainingHealth

    class HealthCallback(_callback_base()):  # type: ignore[misc]  # transformers', found at run time
        """Runs a `TrainingHealth` inside ``Trainer.train()``. Arguments as for
        `TrainingHealth` (``primary``, ``policy``, ``detectors``, ``console``, ...)."""

        def __init__(self, run_dir: str | os.PathLike | None = None, **health_kwargs: Any) -> None:
            super().__init__()
            self.run_dir = run_dir
            self.health_kwargs = health_kwargs
            self.health: TrainingHealth | None = None
            self._hook: Any = None
            self._losses: list[Any] = []  # this step's batch losses (detached tensors)
            self._summed = False  # the model normalised its loss by the step's item count
            self._batches = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                           optimizer: Any = None, **kwargs: Any) -> None:
            """Called at the start of ``train()``: the model and optimizer exist now."""
            if model is None or optimizer is None:
                raise RuntimeError("HealthCallback needs the Trainer's model and optimizer at train start")
            main = state.is_world_process_zero
            health_kwargs = dict(self.health_kwargs)
            if not main:
                health_kwargs["sinks"] = []
            planned = getattr(state, "max_steps", None)
            if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 1:
                health_kwargs.setdefault("total_steps", planned)
            self.health = TrainingHealth(model, optimizer, self.run_dir if main else None,
                                         rank=getattr(args, "process_index", 0), **health_kwargs)
            self._hook = model.register_forward_hook(self._keep_loss, with_kwargs=True)

        def _keep_loss(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
            loss = _loss_of(output)
            if module.training and loss is not None and hasattr(loss, "detach"):
                self._losses.append(loss.detach())
                self._summed = kwargs.get("num_items_in_batch") is not None

        def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Called after a batch whose gradients are accumulated into the next step."""
            self._batches += 1

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Called before optimizer.step(), after clipping: judge the gradients."""
            if self.health is None:
                return
            batches, self._batches = self._batches + 1, 0
            losses, self._losses = self._losses, []
            loss = None
            if losses:
                total = sum(losses[1:], losses[0])
                loss = total if self._summed else total / len(losses)
            self.health.after_backward(loss, batches=batches)  # None: the model returned no loss
            self._stop(control)

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Called after optimizer.step(): the update norms."""
            if self.health is not None and self.health._pending is not None:
                self.health.after_step()
                self._stop(control)

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Called at the end of each epoch."""
            if self.health is not None:
                self.health.end_epoch()
                self._stop(control)

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
            """Called after an evaluation, with its metrics (``eval_loss``, ...)."""
            if self.health is None or not metrics or metrics.get("eval_loss") is None:
                return
            extra = {k: v for k, v in metrics.items()
                     if k != "eval_loss" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            baselines, higher = _take_baselines(extra)
            self.health.evaluate(metrics["eval_loss"], metrics=extra, baselines=baselines, higher_is_better=higher)
            self._stop(control)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Called at the end of ``train()``: write the summary and close the files."""
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            if self.health is not None:
                self.health.close()

        def _stop(self, control: Any) -> None:
            if self.health is not None and self.health.should_stop:
                control.should_training_stop = True

    return HealthCallback


def __getattr__(name: str) -> Any:
    if name == "HealthCallback":
        cls = _build()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["HealthCallback"]  # noqa: F822 (made on first use by __getattr__)

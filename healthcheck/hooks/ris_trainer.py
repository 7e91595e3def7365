"""The health monitor as a ``ris_model`` Trainer callback.

``ris-model train`` attaches it by default through the ``ris_model.callbacks`` entry
point (``--no-health`` opts out, ``--health-policy FILE`` sets the policy). The trainer
hands over one metrics dict per phase (docs/run-dir.md); the monitor judges it and, when
the policy says stop, the callback asks the trainer for a clean stop. A stop decided at
``after_backward`` lands before the optimizer step, so NaN gradients or a dead primary
weight never reach the weights.

Under DDP every rank runs its own monitor (events carry the rank, all ranks append to
the one health.jsonl) and the trainer agrees on a stop across ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ris_model.callbacks import Callback

from ..monitor import Monitor
from ..observe import LiveView, as_record
from ..policy import Policy
from ..sinks import ConsoleSink, JsonlSink, OptunaSink, WandbSink

HEALTH_FILE = "health.jsonl"


class RisTrainerHealth(Callback):
    """Runs a `Monitor` at after_backward, after_step, epoch end and validation end."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.live: LiveView | None = None

    @classmethod
    def build(cls, run_dir: str | Path | None, *, policy: Policy | None = None, context: str = "train",
              rank: int = 0, console: Any = None, wandb_run: Any = None, extra_sinks: tuple = (),
              every: int | Mapping[str, int] = 1) -> "RisTrainerHealth":
        sinks: list[Any] = []
        if run_dir is not None:
            sinks.append(JsonlSink(Path(run_dir) / HEALTH_FILE))
        if rank == 0:
            sinks.append(ConsoleSink(console))
            if wandb_run is not None:
                sinks.append(WandbSink(wandb_run))
        sinks.extend(extra_sinks)
        policy = Policy.from_env(base=policy or Policy())
        return cls(Monitor(policy=policy, sinks=sinks, context=context, every=every))

    # -- hooks ------------------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        self.live = LiveView(trainer.model, trainer.optimizer)

    def on_after_backward(self, trainer, metrics) -> None:
        self._observe(trainer, metrics, "after_backward")

    def on_after_optimizer_step(self, trainer, metrics) -> None:
        self._observe(trainer, metrics, "after_step")

    def on_epoch_end(self, trainer, metrics) -> None:
        self._observe(trainer, metrics, "epoch")

    def on_validation_end(self, trainer, metrics) -> None:
        self._observe(trainer, metrics, "eval")

    def on_fit_end(self, trainer) -> None:
        if not self.monitor.closed:
            self.monitor.close()

    def _observe(self, trainer, metrics: Mapping[str, Any], phase: str) -> None:
        self.monitor.observe(as_record(metrics), phase, self.live)
        if self.monitor.should_stop and trainer.stop_reason is None:
            trainer.request_stop(self.monitor.stop_message or "stopped by the health policy")


def callback_factory(options: Mapping[str, Any]) -> list[Callback]:
    """Entry point for ``ris_model.callbacks``: the monitor ``ris-model train`` attaches."""
    policy = Policy.from_file(options["policy_file"]) if options.get("policy_file") else None
    wandb = options.get("wandb")
    extra = list(options.get("extra_sinks", ()))
    if options.get("trial") is not None:  # an optuna trial: prunes carry their reason
        extra.append(OptunaSink(options["trial"]))
    return [RisTrainerHealth.build(options.get("run_dir"), policy=policy, context=options.get("context", "train"),
                                   rank=options.get("rank", 0), console=options.get("console"),
                                   wandb_run=getattr(wandb, "run", None),
                                   extra_sinks=tuple(extra))]


__all__ = ["RisTrainerHealth", "callback_factory"]

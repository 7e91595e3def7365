"""The health monitor as a ``ris_model`` Trainer callback.

``ris-model train`` attaches it by default through the ``ris_model.callbacks`` entry
point (``--no-health`` opts out, ``--health-policy FILE`` sets the policy). The trainer
hands over one metrics dict per phase (docs/run-dir.md); the monitor judges it and, when
the policy says stop, the callback asks the trainer for a clean stop. A stop decided at
``after_backward`` lands before the optimizer step, so NaN gradients or a dead primary
weight never reach the weights.

Under DDP every rank runs its own monitor (events carry the rank, all ranks append to
the one health.jsonl) and the trainer agrees on a stop across ranks.

Gradients carried over from one optimizer step into the next (``grad.not_cleared``) are
watched with hooks on the trainer's parameters and optimizer (`GradClearWatch`) from fit
start to fit end.

Every ``PROBE_EVERY`` training steps, before backward, the callback scores the batch's
prediction against its own targets and against the targets of other scenes in the batch
(`pairing_gap`, no extra forward): ``data.no_signal`` fires when a run lowers its loss
without the two ever parting, e.g. every scene carrying the same targets.

At fit start the callback adds what only the trainer knows: the range each loss term
can take (`term_ranges`), judged on every step and every evaluation
(``value.out_of_range``), so a scale bug shows at step 0 instead of as a curve.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ris_model.loss import CovPrediction
from ris_model.training.callbacks import Callback
from ris_model.training.stop import StopReason

from ..detectors import ExpectedRange
from ..live import LiveView, owner_module
from ..monitor import Monitor
from ..policy import Policy
from ..record import as_record
from ..signals import GradClearWatch, WeightWriteWatch, pairing_gap
from ..sinks import ConsoleSink, JsonlSink, OptunaSink, WandbSink

HEALTH_FILE = "health.jsonl"
PROBE_EVERY = 10  # training steps between pairing probes, as TrainingHealth's default


def term_ranges(n_elements: int) -> dict[str, tuple[float, float]]:
    """The range every HybridLoss term stays in for any model, trained or not.

    ``cov`` = ‖R̂ − R‖²_F / ‖R‖²_F for PSD R̂, R of trace N is in [0, 1 + N] (derived in
    ``healthcheck.ris.gate_subject``: ‖R̂‖² <= N², ‖R‖² >= N, tr(R̂R) >= 0); ``subspace``,
    ``peak`` and ``ortho`` are shares in [0, 1] by construction. These are the gate's
    ``init_ranges`` without its initialisation-only lower bound on ``cov``: a trained
    model may bring cov near 0. A value outside is a scale or unit bug (docs/failure-catalogue.md row 6),
    not a hard batch.
    """
    if isinstance(n_elements, bool) or not isinstance(n_elements, int) or n_elements < 1:
        raise ValueError(f"n_elements must be an integer >= 1, but got {n_elements=}")
    return {"cov": (0.0, 1.0 + n_elements), "subspace": (0.0, 1.0), "peak": (0.0, 1.0), "ortho": (0.0, 1.0)}


def range_detectors(n_elements: int) -> list[ExpectedRange]:
    """One `ExpectedRange` per loss term, on every step and evaluation."""
    return [ExpectedRange(term, low, high) for term, (low, high) in term_ranges(n_elements).items()]


class RisTrainerHealth(Callback):
    """Runs a `Monitor` at after_backward, after_step, epoch end and validation end."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.live: LiveView | None = None
        self._ranges_added = False
        self._seen: tuple[Any, Any] = (None, None)  # (trainer's names, live names) last mapped
        self._order: list[int] | None = None  # live parameter i is the trainer's _order[i]
        self._clear_watch: GradClearWatch | None = None
        self._write_watch: WeightWriteWatch | None = None
        self._signals: dict[str, Any] = {}  # this step's probes, handed to the live view after backward
        self._probe_gen: Any = None

    @classmethod
    def build(cls, run_dir: str | Path | None, *, policy: Policy | None = None, context: str = "train",
              rank: int = 0, console: Any = None, wandb_run: Any = None, extra_sinks: tuple = (),
              every: int | Mapping[str, int] = 1) -> RisTrainerHealth:
        sinks: list[Any] = []
        if run_dir is not None:
            sinks.append(JsonlSink(Path(run_dir) / HEALTH_FILE))
        if rank == 0:
            sinks.append(ConsoleSink(console))
            if wandb_run is not None:
                sinks.append(WandbSink(wandb_run))
        sinks.extend(extra_sinks)
        if policy is None:  # the defaults, with HEALTHCHECK_SILENCE / _REGRADE / _POLICY applied
            policy = Policy.from_env()
        return cls(Monitor(policy=policy, sinks=sinks, context=context, every=every))

    # -- hooks ------------------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        self.live = LiveView(trainer.model, trainer.optimizer)
        self.live.planned_steps = getattr(trainer, "total_steps", None)
        self._remove_watch()
        self._clear_watch = GradClearWatch(self.live.named_params, trainer.optimizer)
        self._write_watch = WeightWriteWatch(self.live.named_params)
        if not self._ranges_added:  # a second fit() keeps the detectors it already has
            self.monitor.add_detectors(range_detectors(trainer.cfg.system.n_elements))
            self._ranges_added = True

    def on_before_backward(self, trainer, batch, prediction, out) -> None:
        if trainer.state.batches_seen % PROBE_EVERY:
            return
        if self._probe_gen is None:
            self._probe_gen = torch.Generator().manual_seed(trainer.dist.rank)

        def loss_of(factor, targets):
            return trainer.loss_fn(CovPrediction(factor=factor), *targets).total

        targets = (batch.R, batch.phi, batch.theta, batch.r, batch.mask)
        gap = pairing_gap(prediction.factor.detach(), targets, loss_of, self._probe_gen)
        if gap is not None:
            self._signals["pairing"] = gap

    def on_after_backward(self, trainer, metrics) -> None:
        self._offer_grad_norms(trainer, metrics)
        if self.live is not None:
            signals, self._signals = self._signals, {}
            uncleared = self._clear_watch.take() if self._clear_watch is not None else None
            if uncleared:
                signals["uncleared_grads"] = uncleared
            written = self._write_watch.take() if self._write_watch is not None else ()
            if written:
                signals["moved_outside"] = tuple(dict.fromkeys(owner_module(n) for n in written))
            self.live.signals = signals
        self._observe(trainer, metrics, "after_backward")

    def on_after_optimizer_step(self, trainer, metrics) -> None:
        if self._write_watch is not None:
            self._write_watch.settle()
        self._observe(trainer, metrics, "after_step")

    def on_epoch_end(self, trainer, metrics) -> None:
        self._observe(trainer, metrics, "epoch")

    def on_validation_end(self, trainer, metrics) -> None:
        self._observe(trainer, metrics, "eval")

    def on_fit_end(self, trainer) -> None:
        self._remove_watch()
        if not self.monitor.closed:
            self.monitor.close()

    def _remove_watch(self) -> None:
        if self._clear_watch is not None:
            self._clear_watch.remove()
            self._clear_watch = None
        self._write_watch = None

    def _offer_grad_norms(self, trainer, metrics: Mapping[str, Any]) -> None:
        """Hand the per-parameter gradient norms the trainer measured for this step to the
        live view: reducing every gradient again cost more than all detectors together."""
        measured = getattr(trainer, "param_grad_norms", None)
        live = self.live
        if measured is None or live is None:
            return
        step, names, values = measured
        if step != metrics.get("step"):
            return  # not this step's measurement: the live view reduces the gradients itself
        if self._seen[0] is not names or self._seen[1] is not live.names:
            self._seen = (names, live.names)
            self._order = _order_of(names, live)
        if self._order is not None:
            live.offer_grad_norms("after_backward", step, [values[i] for i in self._order])

    def _observe(self, trainer, metrics: Mapping[str, Any], phase: str) -> None:
        self.monitor.observe(as_record(metrics), phase, self.live)
        if self.monitor.should_stop and trainer.stop_reason is None:
            trainer.request_stop(self.monitor.stop_message or "stopped by the health policy", StopReason.HEALTH)


def _order_of(names: tuple[str, ...], live: LiveView) -> list[int] | None:
    """Where each of the live view's parameters is in the trainer's list, or None if the
    trainer's norms cannot stand in for the live view's: other parameters, or a dtype
    other than float32 (the trainer reduces in the gradients' dtype, the live view in
    float32, and a float16 norm can round a tiny gradient to an exact 0)."""
    import torch

    where = {n: i for i, n in enumerate(names)}
    if len(where) != len(names) or where.keys() != set(live.names):
        return None
    if any(p.dtype != torch.float32 for _, p in live.named_params):
        return None
    return [where[n] for n in live.names]


def callback_factory(options: Mapping[str, Any]) -> list[Callback]:
    """Entry point for ``ris_model.callbacks``: the monitor ``ris-model train`` attaches."""
    policy = Policy.from_env(base=Policy.from_file(options["policy_file"]) if options.get("policy_file") else None)
    if options.get("silence") or options.get("regrade"):  # CLI flags win over file and environment
        policy = policy.merged(Policy(silence=options.get("silence", ()), regrade=options.get("regrade", {})))
    wandb = options.get("wandb")
    extra = list(options.get("extra_sinks", ()))
    if options.get("trial") is not None:  # an optuna trial: prunes carry their reason
        extra.append(OptunaSink(options["trial"]))
    return [RisTrainerHealth.build(options.get("run_dir"), policy=policy, context=options.get("context", "train"),
                                   rank=options.get("rank", 0), console=options.get("console"),
                                   wandb_run=getattr(wandb, "run", None),
                                   extra_sinks=tuple(extra))]


__all__ = ["RisTrainerHealth", "callback_factory", "range_detectors", "term_ranges"]

"""Health checks for a plain PyTorch loop, in three lines.

```python
with healthcheck.TrainingHealth(model, optimizer, run_dir="runs/x") as health:
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        health.after_backward(loss, terms={...}, weights={...}, primary="mse")
        optimizer.step()
        health.after_step()
        if health.should_stop:
            break
```

Leaving the ``with`` block writes the closing summary; an exception inside it is recorded
as ``run.crashed`` first and then propagates. ``evaluate`` and ``end_epoch`` add validation
and epoch records (the ``val.*`` checks need them).

Two optional probes need the step's output before ``loss.backward()`` frees its graph:
``health.before_backward(output, terms=..., weights=..., targets=y, loss_fn=criterion)``
checks, every ``probe_every`` steps, that each positive-weight term has a gradient with
respect to the model's output (`healthcheck.signals.term_reach`) and that the output fits
its own targets better than targets shuffled within the batch
(`healthcheck.signals.pairing_gap`). Gradients carried over from one optimizer step into
the next (a forgotten ``zero_grad``) are watched without any call (``watch_grad_clearing``).

`TrainingHealth` measures what the detectors read (per-module gradient, update and
parameter norms, with one host sync per phase), writes metrics.jsonl and health.jsonl in
``run_dir`` (and modules.json: which parameters each module name in the norms stands for),
and runs a `Monitor`. When the policy asks for a stop at ``after_backward``
(a NaN gradient, a zero primary weight), the gradients are set to None, so the
``optimizer.step()`` that may still follow changes nothing (optimizers skip parameters
without a gradient); the step is then recorded as skipped.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..codes import CODES, Code, declare
from ..detectors.baseline import baseline_metrics
from ..events import HealthEvent, Severity
from ..live import MAX_GROUPS, LiveView, ModuleNorms
from ..monitor import Monitor
from ..record import MetricsWriter, StepRecord
from ..safe_files import real_dir, write_atomic
from ..signals import GradClearWatch, pairing_gap, term_reach
from ..sinks import default_sinks

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..detectors import Detector
    from ..policy import Policy

METRICS_FILE = "metrics.jsonl"
MODULES_FILE = "modules.json"
MODULES_SCHEMA = 1

LOOP_CODES = declare(
    Code("run.crashed", Severity.ERROR,
         meaning="The training loop raised an exception: the run ended there (type and message "
                 "in the event).",
         fix="Read the exception in the detail; the metrics and health logs were closed cleanly "
             "up to the step where it happened."),
)


class HealthStop(RuntimeError):
    """Raised by `TrainingHealth` with ``raise_on_stop=True`` when the policy stops the run."""

    def __init__(self, event: HealthEvent) -> None:
        super().__init__(event.line())
        self.event = event


def write_modules(run_dir: str, norms: ModuleNorms) -> str:
    """Write ``run_dir``/modules.json (docs/run-dir.md): which parameters each module name
    in the metrics' norms stands for. Whole or not at all (temp file + rename), so ranks
    sharing a run dir may each write it."""
    text = json.dumps({"schema": MODULES_SCHEMA, **norms.grouping()}, indent=1) + "\n"
    return write_atomic(os.path.join(real_dir(run_dir), MODULES_FILE), text.encode("utf-8"), fsync=False)


def _floats(values: Sequence[Any]) -> list[float]:
    """Python floats from a mix of numbers and tensors, with one host sync for the tensors."""
    tensors = [v for v in values if hasattr(v, "detach")]
    if not tensors:
        return [float(v) for v in values]
    import torch

    dev = tensors[0].device
    read = iter(torch.stack([t.detach().reshape(()).to(dev, torch.float64) for t in tensors]).tolist())
    return [next(read) if hasattr(v, "detach") else float(v) for v in values]


_EAGER_METHODS = ("before_backward", "after_backward", "after_step", "end_epoch", "evaluate", "close", "record_crash")


def _keep_out_of_compiled_graphs(health: TrainingHealth) -> None:
    """Make the monitor's calls run eagerly when a ``torch.compile``d training step makes
    them: dynamo would otherwise trace the monitor's own tensor work (fused norms, host
    reads, file writes) into the user's graph, which costs compile time and, on some torch
    releases, fails outright. ``torch.compiler.disable`` (torch >= 2.1) marks each bound
    method: dynamo then breaks the graph there and runs it as plain Python."""
    import torch

    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    if disable is None:  # pragma: no cover - older than the supported range
        return
    for name in _EAGER_METHODS:
        setattr(health, name, disable(getattr(health, name)))


class TrainingHealth:
    """Monitor a hand-written training loop. See the module docstring for the three calls.

    Args:
        model, optimizer: what is trained (one optimizer).
        run_dir: where metrics.jsonl and health.jsonl are appended and modules.json is
            written; None writes no files.
        detectors, policy, every, context: passed to `Monitor`.
        sinks: replace the default sinks (health.jsonl in run_dir, the console).
        extra_sinks: added to the default sinks (e.g. ``WandbSink()``).
        console: print warnings and stops (default sinks only).
        primary: name of the primary loss term, if not given per call.
        scaler: a ``torch.amp.GradScaler``: gradients are unscaled at after_backward (so the
            norms are true norms; ``scaler.step`` then does not unscale again), and a step
            whose scale dropped is recorded as skipped with ``found_inf``.
        track_updates: measure ‖Δθ‖ (costs one copy of the trainable parameters).
        guard: on a stop at after_backward, set gradients to None so the step is a no-op.
        raise_on_stop: raise `HealthStop` instead of only setting ``should_stop``.
        watch_grad_clearing: hook the parameters and the optimizer's step to see gradients
            that are not cleared between optimizer steps (``grad.not_cleared``).
        probe_every: `before_backward` measures every this many steps (0: never).
        max_groups: at most this many modules in the per-module norms
            (`healthcheck.live.module_groups`); the grouping is written to modules.json.
        total_steps: the optimizer steps the run plans, if the loop knows them (the length
            its schedule was built for). Lets the monitor tell a schedule that reaches ~0
            with much of the run left (``lr.spent_early``) from one that ends on time.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 run_dir: str | os.PathLike | None = None, *,
                 detectors: Iterable[Detector] | None = None, policy: Policy | None = None,
                 context: str = "train", every: int | Mapping[str, int] = 1,
                 sinks: Iterable[Any] | None = None, extra_sinks: Iterable[Any] = (),
                 console: bool = True, primary: str | None = None, scaler: Any = None,
                 track_updates: bool = True, guard: bool = True, raise_on_stop: bool = False,
                 rank: int = 0, watch_grad_clearing: bool = True, probe_every: int = 10,
                 max_groups: int = MAX_GROUPS, total_steps: int | None = None) -> None:
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"total_steps must be a positive int (the optimizer steps the run plans) or None, "
                             f"but got {total_steps=}")
        self.model = model
        self.optimizer = optimizer
        self.run_dir = None if run_dir is None else os.fspath(run_dir)
        self.primary = primary
        self.scaler = scaler
        self.guard = guard
        self.raise_on_stop = raise_on_stop
        self.rank = rank
        self.live = LiveView(model, optimizer)
        self.live.planned_steps = total_steps
        self.norms = ModuleNorms(model, track_updates=track_updates, max_groups=max_groups)
        if self.run_dir is not None:
            write_modules(self.run_dir, self.norms)
        chosen = (default_sinks(self.run_dir, console=console) if sinks is None else list(sinks))
        chosen += list(extra_sinks)
        self.monitor = Monitor(detectors, policy, chosen, every=every, context=context)
        self.metrics = None if self.run_dir is None else MetricsWriter(os.path.join(self.run_dir, METRICS_FILE))
        self.epoch = 0
        self.batches_seen = 0
        self.steps_attempted = 0  # after_backward calls: the ``step`` of records and events
        self.steps_taken = 0
        self._pending: StepRecord | None = None
        self._guarded = False
        self._scale_before: float | None = None
        self._epoch_sum = 0.0
        self._epoch_terms: dict[str, float] = {}
        self._epoch_n = 0
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 0:
            raise ValueError(f"probe_every must be an integer >= 0, but got {probe_every=}")
        self.probe_every = probe_every
        self._clear_watch = (GradClearWatch(self.live.named_params, optimizer)
                             if watch_grad_clearing else None)
        self._signals: dict[str, Any] = {}
        self._probe_gen: Any = None
        _keep_out_of_compiled_graphs(self)

    # -- the three calls ----------------------------------------------------------------
    def before_backward(self, output: Any, terms: Mapping[str, Any] | None = None,
                        weights: Mapping[str, Any] | None = None, *, targets: Any = None,
                        loss_fn: Any = None) -> None:
        """Optional, before ``loss.backward()``: probe this step's ``output`` (a tensor or a
        tuple of them, still attached to its graph) every ``probe_every`` steps.

        ``terms`` (the loss terms as tensors) and ``weights``: the gradient of each term
        with a positive weight with respect to ``output`` must be finite and non-zero where
        the term is not zero (``loss.term_unreached``); pass only terms computed from the
        output (a penalty on the parameters has no reach to it by design). ``targets`` and
        ``loss_fn(output, targets)``: the loss against the true targets must come out
        measurably lower than against targets shuffled within the batch once the model has
        had time to learn (``data.no_signal``). Costs a backward through the loss only (not
        the model) and two loss evaluations, on probed steps.
        """
        if not self.probe_every or self.batches_seen % self.probe_every:
            return
        import torch

        if terms:
            self._signals["term_reach"] = term_reach(output, terms, {
                k: float(v) for k, v in (weights or {}).items()})
        if targets is not None and loss_fn is not None:
            if self._probe_gen is None:
                self._probe_gen = torch.Generator().manual_seed(self.rank)
            gap = pairing_gap(output, targets, loss_fn, self._probe_gen)
            if gap is not None:
                self._signals["pairing"] = gap

    def after_backward(self, loss: Any, terms: Mapping[str, Any] | None = None,
                       weights: Mapping[str, Any] | None = None, *, primary: str | None = None,
                       weight_sources: Mapping[str, str] | None = None,
                       metrics: Mapping[str, Any] | None = None, batches: int = 1) -> Sequence[HealthEvent]:
        """Call once per optimizer step, when its gradients are complete: after the last
        ``loss.backward()`` it accumulates, before gradient clipping and ``optimizer.step()``
        (so a gradient spike is seen as it was, and a stop still keeps the step from changing
        the weights). With ``scaler=`` the gradients are unscaled here, so clipping after
        this call needs no ``scaler.unscale_``. ``terms`` are the unweighted loss terms,
        ``weights`` their effective weights; ``batches`` is how many batches this step
        accumulated: step numbers then count optimizer steps, ``batches_seen`` batches.
        ``loss`` may be None where the loop cannot see it (the loss checks then skip it)."""
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ValueError(f"batches must be an integer >= 1 (batches accumulated into this step), "
                             f"but got {batches=}")
        if self._pending is not None:  # after_step was not called for the previous batch
            self._finish(skipped=True)
        terms = dict(terms or {})
        weights = dict(weights or {})
        metrics = dict(metrics or {})
        values = _floats([0.0 if loss is None else loss, *terms.values(), *weights.values(), *metrics.values()])
        it = iter(values)
        loss_f: float | None = next(it)
        if loss is None:
            loss_f = None
        terms_f, weights_f, metrics_f = ({k: next(it) for k in d} for d in (terms, weights, metrics))
        amp = None
        if self.scaler is not None and self.scaler.is_enabled():
            try:
                self.scaler.unscale_(self.optimizer)
            except RuntimeError:
                pass  # already unscaled by the loop (e.g. for clipping)
            self._scale_before = float(self.scaler.get_scale())
            amp = {"scale": self._scale_before, "found_inf": None}
        step = self.steps_attempted
        self.steps_attempted += 1
        self.batches_seen += batches
        record = StepRecord(
            kind="step", step=step, epoch=self.epoch, loss=loss_f,
            terms=terms_f, weights=weights_f,
            weight_sources=dict(weight_sources or {}), primary=primary or self.primary,
            lr=[float(g["lr"]) for g in self.optimizer.param_groups],
            grad_norm=self._grad_norms(step), amp=amp, steps_taken=self.steps_taken,
            batches_seen=self.batches_seen, metrics=metrics_f, rank=self.rank)
        self._pending = record
        self.norms.snapshot()
        self.live.signals, self._signals = self._signals, {}
        if self._clear_watch is not None:
            uncleared = self._clear_watch.take()
            if uncleared:
                self.live.signals["uncleared_grads"] = uncleared
        events = self.monitor.observe(record, "after_backward", self.live)
        if self.monitor.should_stop and self.guard:
            self.optimizer.zero_grad(set_to_none=True)
            self._guarded = True
        self._raise_if_stopped()
        return events

    def after_step(self, skipped: bool | None = None) -> Sequence[HealthEvent]:
        """Call after ``optimizer.step()`` (and ``scaler.update()``). ``skipped``: the loop
        knows the step was not applied; by default it is inferred (guard, AMP scale drop)."""
        if self._pending is None:
            raise RuntimeError("after_step() needs a preceding after_backward() for this batch")
        events = self._finish(skipped)
        self._raise_if_stopped()
        return events

    def end_epoch(self, loss: Any = None, terms: Mapping[str, Any] | None = None,
                  metrics: Mapping[str, Any] | None = None, *, step: int | None = None) -> Sequence[HealthEvent]:
        """Close the epoch: an epoch record (mean step loss unless given) is judged and written.
        ``step`` stamps it (default: the steps so far); a framework whose own logs stamp
        epoch results with the last step's index passes that, so both name one step."""
        if self._pending is not None:
            self._finish(skipped=True)
        if loss is None:  # the mean of this epoch's finite step losses
            n = self._epoch_n
            loss_f = self._epoch_sum / n if n else None
            terms_f = {k: v / n for k, v in self._epoch_terms.items()} if n else {}
        else:
            loss_f, terms_f = _floats([loss])[0], {}
        if terms is not None:
            t = dict(terms)
            terms_f = dict(zip(t, _floats(list(t.values()))))
        m = dict(metrics or {})
        record = StepRecord(
            kind="epoch", step=self.steps_attempted if step is None else step, epoch=self.epoch,
            loss=loss_f, terms=terms_f,
            lr=[float(g["lr"]) for g in self.optimizer.param_groups], steps_taken=self.steps_taken,
            batches_seen=self.batches_seen, metrics=dict(zip(m, _floats(list(m.values())))),
            rank=self.rank)
        events = self.monitor.observe(record, "epoch", self.live)
        self._write(record)
        self.epoch += 1
        self._epoch_sum, self._epoch_terms, self._epoch_n = 0.0, {}, 0
        self._raise_if_stopped()
        return events

    def evaluate(self, loss: Any, terms: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, Any] | None = None, *, step: int | None = None,
                 baselines: Mapping[str, Any] | None = None,
                 higher_is_better: Iterable[str] = ()) -> Sequence[HealthEvent]:
        """Report a validation result (loss and optional terms / metrics); ``step`` as for
        `end_epoch`. ``baselines`` ({"loss": 0.69, "acc": 0.5}) are what needs no training
        scores on the same data (a constant predictor, a classical estimate): the record
        carries them as ``baseline/<name>`` metrics (``baseline_max/<name>`` for the names
        in ``higher_is_better``; lower is better otherwise) and ``val.below_baseline``
        fires while the model does not beat them."""
        t, m = dict(terms or {}), dict(metrics or {})
        m.update(baseline_metrics(baselines, higher_is_better))
        vals = _floats([loss, *t.values(), *m.values()])
        record = StepRecord(
            kind="eval", step=self.steps_attempted if step is None else step, epoch=self.epoch, loss=vals[0],
            terms=dict(zip(t, vals[1:1 + len(t)])), metrics=dict(zip(m, vals[1 + len(t):])),
            rank=self.rank)
        events = self.monitor.observe(record, "eval", self.live)
        self._write(record)
        self._raise_if_stopped()
        return events

    # -- state --------------------------------------------------------------------------
    @property
    def should_stop(self) -> bool:
        return self.monitor.should_stop

    @property
    def should_prune(self) -> bool:
        return self.monitor.should_prune

    @property
    def stop_reason(self) -> HealthEvent | None:
        return self.monitor.stop_reason

    @property
    def stop_message(self) -> str | None:
        return self.monitor.stop_message

    def summary(self) -> dict[str, Any]:
        return self.monitor.summary()

    def close(self) -> dict[str, Any]:
        """Write what is pending, the monitor's summary, and close the files. Idempotent."""
        if self._pending is not None:
            self._finish(skipped=True)
        summary = self.monitor.close()
        if self._clear_watch is not None:
            self._clear_watch.remove()
        if self.metrics is not None:
            self.metrics.close()
        return summary

    def record_crash(self, exc: BaseException) -> HealthEvent | None:
        """Record that the loop raised ``exc`` (``run.crashed``: its type and message, where it
        was raised). The ``with`` form calls this itself; an adapter whose framework reports
        exceptions (Lightning's ``on_exception``) calls it before `close`. Not for a
        `HealthStop` (the policy's own stop) or an interrupt (Ctrl-C, SystemExit): those end
        the run on purpose, and only close it."""
        if not isinstance(exc, Exception) or isinstance(exc, HealthStop) or self.monitor.closed:
            return None
        frames = traceback.extract_tb(exc.__traceback__)
        at = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        message = str(exc).strip() or "(no message)"
        kind = type(exc).__qualname__
        return self.monitor.emit(HealthEvent(
            code="run.crashed", severity=CODES["run.crashed"].severity, step=self.steps_attempted,
            epoch=self.epoch, title=f"training raised {kind}: {message.splitlines()[0][:200]}",
            detail=f"{kind}: {message}{at}; {self.steps_taken} optimizer steps applied, "
                   f"{self.batches_seen} batches seen.",
            where=kind, hint=CODES["run.crashed"].fix, rank=self.rank))

    def __enter__(self) -> TrainingHealth:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Leaving the block, by its end or an exception: an exception is recorded as
        ``run.crashed``, then what is pending is written and the logs are closed; the
        exception then propagates as it would without the monitor."""
        if exc is not None:
            self.record_crash(exc)
        self.close()

    # -- internals ----------------------------------------------------------------------
    def _finish(self, skipped: bool | None) -> Sequence[HealthEvent]:
        record, self._pending = self._pending, None
        assert record is not None
        found_inf = None
        if self._scale_before is not None and self.scaler is not None:
            scale_after = float(self.scaler.get_scale())
            found_inf = scale_after < self._scale_before
            record.amp = {"scale": scale_after, "found_inf": found_inf}
            self._scale_before = None
        if skipped is None:
            skipped = self._guarded or bool(found_inf)
        self._guarded = False
        updates, params = self.norms.after_step()
        record.update_norm, record.param_norm = updates, params
        if self.norms.moved_outside:
            self.live.signals = {**self.live.signals, "moved_outside": self.norms.moved_outside}
        record.skipped = skipped
        if not skipped:
            self.steps_taken += 1
        record.steps_taken = self.steps_taken
        if record.loss is not None and math.isfinite(record.loss):
            self._epoch_sum += record.loss
            self._epoch_n += 1
            for k, v in record.terms.items():
                self._epoch_terms[k] = self._epoch_terms.get(k, 0.0) + v
        events = self.monitor.observe(record, "after_step", self.live)
        self._write(record)
        return events

    def _grad_norms(self, step: int) -> dict[str, float]:
        # per-parameter norms once, shared by the module norms and the live detectors
        self.live.begin("after_backward", step)
        stats = self.live.param_grad_stats()
        return self.norms.grad_norms(stats.norms if stats.names == self.norms.names else None)

    def _write(self, record: StepRecord) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def _raise_if_stopped(self) -> None:
        if self.raise_on_stop and self.monitor.should_stop and self.monitor.stop_reason is not None:
            raise HealthStop(self.monitor.stop_reason)

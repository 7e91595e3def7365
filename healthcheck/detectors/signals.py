"""Detectors that read exact facts the training process measured (`healthcheck.signals`),
not norms: gradients carried over between optimizer steps, a loss term with no gradient
reaching the model's output, an output that fits shuffled targets as well as its own.

They read ``live.signals``, which `TrainingHealth` fills; where nothing was measured (no
live view, a loop that does not call ``before_backward``, another integration) they stay
silent.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView, owner_module
from ..record import StepRecord
from .base import NO_EVENTS, Detector, LossSinceStart, check_float, check_int, fmt, group_names, name_list


def _signal(live: LiveView | None, key: str) -> Any:
    return None if live is None else getattr(live, "signals", {}).get(key)


class GradNotCleared(Detector):
    """Gradients were carried over from one optimizer step into the next
    (``grad.not_cleared``, error).

    The fact comes from hooks (`healthcheck.signals.GradClearWatch`): after a step, a
    parameter's ``.grad`` was still the same tensor at the same version when the next
    backward began adding to it. Accumulating over several backwards before one step is
    not affected. Gradient clipping hides the growth from every norm, so no norm check can
    stand in for this one. Events are grouped by owning module.
    """

    codes = (Code("grad.not_cleared", Severity.ERROR,
                  meaning="Gradients of the last optimizer step were still in .grad when the next "
                          "backward added to them: they add up over every step.",
                  fix="Call optimizer.zero_grad() (or model.zero_grad() on the model being trained) "
                      "once per optimizer step, before the backward of the next one."),)
    phases = frozenset({"after_backward"})
    needs_live = True

    def new_state(self) -> None:
        return None

    def check(self, record: StepRecord, state: None, live: LiveView | None) -> Sequence[HealthEvent]:
        names = _signal(live, "uncleared_grads")
        if not names:
            return NO_EVENTS
        owners = [owner_module(n) for n in names]
        out = []
        for owner, group in group_names(list(names), owners).items():
            out.append(self.event(
                "grad.not_cleared", record, where=owner,
                title=f"gradients of {owner} not cleared since the last optimizer step",
                detail=f"{len(group)} parameter(s) kept last step's gradient: {name_list(group)}.",
                evidence={"params": len(group)}))
        return out


@dataclass
class _MovedState:
    recent: deque[bool] = field(default_factory=deque)  # whether each of the last steps found a write
    loss: LossSinceStart = field(default_factory=LossSinceStart)


class WeightsMovedOutside(Detector):
    """Weights changed between two optimizer steps without the optimizer
    (``param.moved_outside``: a warning each time; an error when it keeps happening and the
    loss does not fall).

    The fact comes from `TrainingHealth`: each parameter's norm as the last optimizer step
    left it, against its norm when the next step's gradients are complete. Something else
    wrote the weights in between: a ``reset_parameters()`` or a ``load_state_dict`` inside
    the loop, EMA weights copied in for an evaluation and never swapped back. A single
    write can be deliberate (a checkpoint loaded, a stage that re-initialises a head), so
    it is a warning. Writes on ``share`` (80 %) of the last ``window`` (20) steps while the
    loss is not ``min_drop`` (10 %) below its start are an error: whatever writes the weights
    undoes the training. A loop that perturbs the weights on purpose and trains (SAM,
    weight clipping after the monitor's call) only warns; call ``after_backward`` before
    the perturbation to keep it quiet.
    """

    codes = (Code("param.moved_outside", Severity.WARNING, Severity.ERROR,
                  meaning="Weights changed between two optimizer steps without the optimizer: something "
                          "else writes them (error when it happens step after step and the loss does not fall).",
                  fix="Look for code that writes the model between steps: reset_parameters() or "
                      "load_state_dict() inside the loop, EMA weights copied in and not restored."),)
    phases = frozenset({"after_step"})
    needs_live = True

    def __init__(self, window: int = 20, share: float = 0.8, min_drop: float = 0.1) -> None:
        self.window = check_int("window", window, 1)
        self.share = check_float("share", share, lo=0.0, hi=1.0, lo_open=True)
        self.min_drop = check_float("min_drop", min_drop, lo=0.0, hi=1.0)

    def new_state(self) -> _MovedState:
        return _MovedState(deque(maxlen=self.window))

    def check(self, record: StepRecord, state: _MovedState, live: LiveView | None) -> Sequence[HealthEvent]:
        if live is None:
            return NO_EVENTS
        moved = tuple(_signal(live, "moved_outside") or ())
        state.recent.append(bool(moved))
        state.loss.add(record.loss)
        if not moved:
            return NO_EVENTS
        writes = sum(state.recent)
        persistent = len(state.recent) == self.window and writes >= self.share * self.window
        start, now = state.loss.start, state.loss.now
        error = persistent and bool(state.loss.first) and not state.loss.fell(self.min_drop)
        where = ", ".join(moved[:3]) + (f" and {len(moved) - 3} more" if len(moved) > 3 else "")
        detail = (f"The norms of {where} when step {record.step}'s gradients were complete differ from "
                  f"what step {record.step - 1}'s optimizer step left: something other than the optimizer "
                  f"wrote them. Writes on {writes} of the last {len(state.recent)} steps.")
        if error:
            detail += (f" The loss has not fallen (from {fmt(start)} to {fmt(now)}): those writes undo the "
                       f"training.")
        return (self.event(
            "param.moved_outside", record, where=moved[0], severity=Severity.ERROR if error else None,
            title=f"weights of {where} changed outside the optimizer",
            detail=detail,
            evidence={"modules": len(moved), "writes": writes, "window": len(state.recent),
                      "loss_start": start, "loss_now": now}),)


class TermUnreached(Detector):
    """A loss term with a positive weight has no finite, non-zero gradient with respect to
    the model's output (``loss.term_unreached``, error).

    Reads the probe `TrainingHealth.before_backward` takes every few steps: for each term,
    |term| and ‖∂term/∂output‖. A term that is not ~0 yet sends no gradient to the output
    was computed from a detached prediction (a ``.detach()`` or ``.item()`` copied from
    logging code, a code path that stopped using the output); one with a non-finite
    gradient will poison the step. ``min_value`` (1e-8) keeps a term that is truly zero
    out of it.
    """

    codes = (Code("loss.term_unreached", Severity.ERROR,
                  meaning="A loss term with a positive weight is not zero, but its gradient with respect "
                          "to the model's output is zero, missing or not finite: it teaches the model "
                          "nothing.",
                  fix="The term is computed from a detached prediction (.detach(), .item(), .numpy(), "
                      "torch.no_grad()): compute it from the model's output tensor itself."),)
    phases = frozenset({"after_backward"})
    needs_live = True

    def __init__(self, min_value: float = 1e-8) -> None:
        self.min_value = check_float("min_value", min_value, lo=0.0)

    def new_state(self) -> None:
        return None

    def check(self, record: StepRecord, state: None, live: LiveView | None) -> Sequence[HealthEvent]:
        reach = _signal(live, "term_reach")
        if not reach:
            return NO_EVENTS
        out = []
        for term, (value, norm) in reach.items():
            if not math.isfinite(value) or value <= self.min_value:
                continue  # a non-finite term is loss.nonfinite's; a zero one has nothing to send
            if math.isfinite(norm) and norm > 0:
                continue
            out.append(self.event(
                "loss.term_unreached", record, where=term,
                title=f"loss term {term!r} sends {'no' if norm == 0 else 'a non-finite'} gradient to the output",
                detail=(f"|{term}| = {fmt(value)}, ‖∂{term}/∂output‖ = {norm!r}: the term does not "
                        "depend on the model's output through the graph."),
                evidence={"term": value, "grad_norm": norm}))
        return out


@dataclass
class _PairingState:
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=5))
    peak: float = -math.inf  # the highest median of the last 5 to 10 losses so far
    recent_losses: deque[float] = field(default_factory=lambda: deque(maxlen=10))


class NoDataSignal(Detector):
    """After ``warmup`` steps, the model's output fits targets shuffled within the batch
    as well as its own (``data.no_signal``, error).

    A run whose targets are not tied to its inputs (labels shuffled apart from them, a
    join on the wrong key, inputs zeroed or constant) still lowers its loss by learning
    the mean target. The probe `TrainingHealth.before_backward` takes (`pairing_gap`)
    compares the loss with the true pairing against the loss with the targets permuted:
    a model that learnt an input-to-target relation does clearly better on the true one.
    The gap is relative to the shuffled loss. Fires once ``warmup`` (100) steps have
    passed, when the median of the last ``probes`` (5) gaps is below ``min_gap`` (0.05)
    while the loss has fallen ``min_drop`` (5 %) below its highest level so far (the
    highest median of the last ten steps, from step 5 on: a run whose loss first rises
    is judged from its peak): a loss that fell with no pairing signal fell by learning the targets'
    mean, and a model still too early to have learnt anything (a large model at step
    100) has not lowered its loss either, so it is left alone. Healthy subjects reach gaps of 0.7 and more by step 100.
    """

    codes = (Code("data.no_signal", Severity.ERROR,
                  meaning="The model fits targets shuffled within the batch as well as the true ones: "
                          "it has learnt no relation from inputs to targets.",
                  fix="The targets are not paired with their inputs, or the inputs carry nothing "
                      "(shuffled labels, a join on the wrong key, zeroed or constant inputs): check "
                      "a batch by hand, input next to target."),)
    phases = frozenset({"after_backward"})
    needs_live = True

    def __init__(self, min_gap: float = 0.05, warmup: int = 100, probes: int = 5,
                 min_drop: float = 0.05) -> None:
        self.min_gap = check_float("min_gap", min_gap, lo=0.0, hi=1.0, lo_open=True)
        self.warmup = check_int("warmup", warmup, 0)
        self.probes = check_int("probes", probes, 1)
        self.min_drop = check_float("min_drop", min_drop, lo=0.0, hi=1.0)

    def new_state(self) -> _PairingState:
        return _PairingState(deque(maxlen=self.probes))

    def check(self, record: StepRecord, state: _PairingState, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.kind == "step" and record.loss is not None and math.isfinite(record.loss):
            state.recent_losses.append(record.loss)
            if len(state.recent_losses) >= 5:
                state.peak = max(state.peak, statistics.median(state.recent_losses))
        pairing = _signal(live, "pairing")
        if pairing is None:
            return NO_EVENTS
        true, shuffled = pairing
        if not (math.isfinite(true) and math.isfinite(shuffled)) or shuffled <= 0:
            return NO_EVENTS
        state.gaps.append((shuffled - true) / shuffled)
        if record.step < self.warmup or len(state.gaps) < self.probes:
            return NO_EVENTS
        gap = statistics.median(state.gaps)
        start, now = state.peak, statistics.median(state.recent_losses)
        if gap >= self.min_gap or not now < (1.0 - self.min_drop) * start:
            return NO_EVENTS
        return (self.event(
            "data.no_signal", record, where="targets",
            title=f"output fits shuffled targets as well as its own (gap {gap:.1%})",
            detail=(f"Over the last {len(state.gaps)} probes the loss with the true targets was "
                    f"only {gap:.2%} below the loss with targets shuffled within the batch "
                    f"(now {fmt(true)} against {fmt(shuffled)}), while the loss fell from "
                    f"{fmt(start)} (its highest level) to {fmt(now)}: it fell by learning the "
                    f"targets' mean. A model that learns from its inputs opens a gap of tens of "
                    f"percent."),
            evidence={"gap": gap, "loss_true": true, "loss_shuffled": shuffled, "loss_start": start,
                      "loss_now": now}),)

"""Does a gradient reach every parameter? Checks before the optimizer step.

A broken graph shows in where gradients go: a detached head has ``.grad is None``
(docs/failure-catalogue.md row 9), a clamp zeroes a head's gradient (row 12), dead ReLUs leave a layer's
units without a gradient. Parameter-level findings need the live model
(``LiveView.param_grad_stats``, one host sync shared by all detectors); ``grad.zero`` also
judges offline, per module, from ``record.grad_norm``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import ROOT, StepRecord
from .base import NO_EVENTS, Detector, Streaks, check_float, check_int, module_items, name_list
from .screens import any_value

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..blocks.columns import MetricBlock


@dataclass
class _ParamCountState:
    names: tuple[str, ...] = ()
    counts: list[int] = field(default_factory=list)


def _per_param_streak(state: _ParamCountState, live: LiveView, hit: Sequence[bool]) -> None:
    names = live.param_grad_stats().names
    if names != state.names:  # parameters were added or unfrozen: start over
        state.names, state.counts = names, [0] * len(names)
    counts = state.counts
    for i, h in enumerate(hit):
        counts[i] = counts[i] + 1 if h else 0


def _grouped_events(det: Detector, code: str, record: StepRecord, state: _ParamCountState,
                    live: LiveView, patience: int, what: str) -> list[HealthEvent]:
    by_owner: dict[str, list[int]] = {}
    for i, c in enumerate(state.counts):
        if c >= patience:
            by_owner.setdefault(live.owners[i], []).append(i)
    out = []
    for owner, idx in by_owner.items():
        params = [state.names[i] for i in idx]
        steps = min(state.counts[i] for i in idx)
        out.append(det.event(
            code, record, where=owner,
            title=f"{len(params)} parameter(s) of {owner!r} {what} for {steps} steps",
            detail=f"Trainable parameters {name_list(params)} {what} on each of the last {steps} steps.",
            evidence={"params": len(params), "steps": steps}))
    return out


class NoneGrad(Detector):
    """A trainable parameter's ``.grad`` stays None for ``patience`` steps (``grad.none``).

    None means autograd never reached the parameter: it is off the loss's graph (a
    detach, a blend weight of 1, an unused branch). Three steps, not one, so a branch used
    only on some batches does not fire at once. Events are grouped by owning submodule.
    """

    codes = (Code("grad.none", Severity.ERROR,
                  meaning="A trainable parameter received no gradient (.grad is None) for N steps.",
                  fix="The parameter is not on the path from the loss: a detach(), a blend weight "
                      "of 1, a branch not used in forward; or it should have requires_grad=False."),)
    phases = frozenset({"after_backward"})
    needs_live = True

    def __init__(self, patience: int = 3) -> None:
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _ParamCountState:
        return _ParamCountState()

    def check(self, record: StepRecord, state: _ParamCountState, live: LiveView | None) -> Sequence[HealthEvent]:
        if live is None:
            return NO_EVENTS
        stats = live.param_grad_stats()
        _per_param_streak(state, live, [not h for h in stats.has_grad])
        return _grouped_events(self, "grad.none", record, state, live, self.patience,
                               "got no gradient (.grad is None)") or NO_EVENTS


@dataclass
class _ZeroState(_ParamCountState):
    modules: Streaks = field(default_factory=Streaks)


class ZeroGrad(Detector):
    """A gradient is exactly 0 for ``patience`` steps (``grad.zero``).

    Exactly 0 is a blocked path (a saturated clamp, a zero weight, dead units), not a small
    gradient; 5 steps so a mask that empties one batch does not fire. With a live view per
    parameter (grouped by owning submodule); offline per module from ``record.grad_norm``.
    """

    codes = (Code("grad.zero", Severity.ERROR,
                  meaning="A parameter's gradient is exactly 0 for N steps.",
                  fix="Gradient blocked: a clamp or a hard threshold saturated, dead ReLUs, a zero "
                      "loss weight, or a mask that removes every element."),)
    phases = frozenset({"after_backward"})
    memory = 1

    def __init__(self, patience: int = 5) -> None:
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _ZeroState:
        return _ZeroState()

    def check(self, record: StepRecord, state: _ZeroState, live: LiveView | None) -> Sequence[HealthEvent]:
        if live is not None:
            stats = live.param_grad_stats()
            _per_param_streak(state, live, [h and v == 0.0 for h, v in zip(stats.has_grad, stats.norms)])
            return _grouped_events(self, "grad.zero", record, state, live, self.patience,
                                   "had an exactly-zero gradient") or NO_EVENTS
        out = []
        for module, value in module_items(record.grad_norm):
            n = state.modules.bump(module, value == 0.0)
            if n >= self.patience:
                out.append(self.event(
                    "grad.zero", record, where=module,
                    title=f"gradient of {module!r} is exactly 0 for {n} steps",
                    detail=f"Module {module!r} had gradient norm 0.0 on each of the last {n} steps.",
                    evidence={"grad_norm": value, "steps": n}))
        return out or NO_EVENTS

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        return any_value(block, "grad_norm", lambda g: g == 0.0, skip_total=True)


_FIRST, _RECENT = 5, 10  # losses averaged for "at first" and "now": one batch must not decide the grade


@dataclass
class _DeadState:
    params: Any = None  # the LiveView.named_params the selection below was made from
    index: tuple[int, ...] = ()  # positions (in named_params) of the weights judged
    probes: tuple[int, ...] = ()  # per judged weight: position of its unit-wise bias, or -1
    counts: list[int] = field(default_factory=list)
    first: list[float] = field(default_factory=list)  # the run's first finite losses: the reference
    losses: int = 0  # finite losses seen
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT))  # the last finite losses


_LOOKUP_TABLES = ("Embedding", "EmbeddingBag")  # rows are sparse by design: one per token


def _select_units(state: _DeadState, live: LiveView) -> None:
    """Pick the weights `DeadUnits` judges and, for each, the bias that stands for its rows."""
    modules = dict(live.model.named_modules())
    position = {name: i for i, (name, _) in enumerate(live.named_params)}
    index, probes = [], []
    for i, ((name, p), owner) in enumerate(zip(live.named_params, live.owners)):
        if p.ndim < 2 or type(modules.get(owner)).__name__ in _LOOKUP_TABLES:
            continue
        bias_name = f"{owner}.bias" if owner != ROOT else "bias"
        j = position.get(bias_name, -1) if name.endswith(".weight") or name == "weight" else -1
        probes.append(j if j >= 0 and tuple(live.named_params[j][1].shape) == (p.shape[0],) else -1)
        index.append(i)
    state.params, state.index, state.probes = live.named_params, tuple(index), tuple(probes)
    state.counts = [0] * len(index)


class DeadUnits(Detector):
    """Half or more of a layer's output units get an exactly-zero gradient for ``patience``
    steps (``grad.dead_units``).

    A unit is dead on a batch when no sample sent any gradient back through it: a dead
    ReLU, an output clamped at a bound for the whole batch (catalogue row 12), a
    zero-initialised layer downstream. DeepDiagnosis's "dead node" symptom, read from
    gradients so no activation has to be hooked. Judged per weight with >= 2 dims (a
    matrix or conv kernel; one output unit or channel per row); embedding tables are
    skipped, their rows are sparse by design. 50 %: far beyond the few units a healthy
    ReLU layer loses; 3 steps: a unit silent on one batch may come back on the next, one
    silent on three batches in a row is dead.

    Where the layer has a bias with one entry per row (Linear, ConvNd), the bias gradient
    is read instead of the weight's rows: entry i is the batch sum of the signal reaching
    unit i, exactly 0 when nothing reached it (an exact cancellation of float sums on
    three batches in a row does not happen). That reads out-times fewer numbers than the
    rows' norms (on the ``small`` preset 0.03 ms a step instead of 0.4 ms), so the check
    can run on every step. Without such a bias, a row's L2 norm is 0 iff the row is 0. A
    weight whose input is all zero has zero rows under live units: that is ``grad.zero``'s
    (whole gradient) or nobody's business, not a dead unit. Needs batches of more than a
    couple of samples: with one sample, a ReLU layer legitimately has about half its units
    inactive.

    Graded by whether the run learns anyway: dead units in a run whose loss keeps falling
    cost capacity, not the run (a warning); in one whose loss does not, they may be why
    (an error). The loss factor is the mean of the first 5 finite losses over the mean of
    the last 10; ``learning`` lists (losses seen, factor a learning run has reached by
    then): from 20 losses a factor under 1.1 (a loss that has not moved) is an error, from
    50 one under 1.5. Before 20 the grade is a warning, raised to an error once the loss
    turns out flat. Measured on ReLU MLPs with 32 hidden units, a regression and a 3-class
    cross-entropy (Adam, lr 1e-2, 5 seeds each; benchmarks/dead_units_grade.py): with
    every unit dead the factor was at most 1.10 at step 20 and 1.14 at step 50; with 20 of
    32 dead, at least 1.11 and 1.97; without dead units at least 1.22 and 2.34.
    """

    codes = (Code("grad.dead_units", Severity.WARNING, Severity.ERROR,
                  meaning="Half or more of a layer's output units got an exactly-zero gradient, "
                          "step after step: those units learn nothing (module named); an error "
                          "when the loss is not improving either.",
                  fix="Dead ReLUs, a clamp or hard threshold on the layer's output, zero "
                      "initialisation, or pre-activations shifted far from 0: check the init and "
                      "what follows that layer."),)
    phases = frozenset({"after_backward"})
    needs_live = True

    def __init__(self, min_fraction: float = 0.5, patience: int = 3,
                 learning: Sequence[tuple[int, float]] = ((20, 1.1), (50, 1.5))) -> None:
        self.min_fraction = check_float("min_fraction", min_fraction, lo=0.0, hi=1.0, lo_open=True)
        self.patience = check_int("patience", patience, 1)
        self.learning = tuple((check_int("learning steps", n, _FIRST + 1), check_float("learning factor", f, lo=1.0))
                              for n, f in learning)

    def new_state(self) -> _DeadState:
        return _DeadState()

    def _learning(self, state: _DeadState) -> tuple[Severity, str, float]:
        """(grade, the reason in words, how many times lower the loss is than at first)."""
        first = sum(state.first) / len(state.first) if state.first else math.nan
        now = sum(state.recent) / len(state.recent) if state.recent else math.nan
        factor = first / now if first > 0 and now > 0 else math.nan
        due = [f for n, f in self.learning if state.losses >= n]
        if not due:
            return Severity.WARNING, f"whether the loss improves is not known yet ({state.losses} steps)", factor
        if factor >= max(due):
            return Severity.WARNING, f"the run still learns: the loss fell {factor:.3g}x since it started", factor
        return Severity.ERROR, (f"the loss is not improving either: {now:.4g} now against {first:.4g} "
                                f"over the first {len(state.first)} steps, after {state.losses}"), factor

    def check(self, record: StepRecord, state: _DeadState, live: LiveView | None) -> Sequence[HealthEvent]:
        if live is None:
            return NO_EVENTS
        if record.loss is not None and math.isfinite(record.loss):
            if len(state.first) < _FIRST:
                state.first.append(record.loss)
            state.losses += 1
            state.recent.append(record.loss)
        if state.params is not live.named_params:  # first call, or the parameters changed
            _select_units(state, live)
        params = live.named_params
        judged = []  # (k, gradient to read, its units are rows: True / a bias vector: False)
        for k, (i, probe) in enumerate(zip(state.index, state.probes)):
            g = params[i][1].grad
            if g is None or g.is_sparse:
                continue
            b = params[probe][1].grad if probe >= 0 else None
            judged.append((k, g.shape[0], b, False) if b is not None and not b.is_sparse else (k, g.shape[0], g, True))
        if not judged:
            for k in range(len(state.counts)):
                state.counts[k] = 0  # no gradient this step: grad.none's business, not judged
            return NO_EVENTS
        import torch

        with torch.no_grad():  # one value per unit, all layers in one vector: few ops, one host sync
            units = torch.cat([
                torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.float32) if rows_ else t.flatten().float()
                for _, _, t, rows_ in judged])
            ends = torch.tensor([rows for _, rows, _, _ in judged], device=units.device).cumsum(0)
            dead_before = torch.cat([units.new_zeros(1, dtype=torch.long), units.eq(0).cumsum(0)])
            upto = dead_before[ends].tolist()
        dead = [b - a for a, b in zip([0, *upto[:-1]], upto)]
        seen = set()
        hits: list[tuple[int, float, int]] = []
        for (k, rows, _, _), n_dead in zip(judged, dead):
            seen.add(k)
            frac = n_dead / rows if rows else 0.0
            state.counts[k] = state.counts[k] + 1 if frac >= self.min_fraction else 0
            if state.counts[k] >= self.patience:
                hits.append((k, frac, rows))
        for k in range(len(state.counts)):
            if k not in seen:
                state.counts[k] = 0  # no gradient this step: grad.none's business, not judged
        by_owner: dict[str, list[tuple[int, float, int]]] = {}
        for hit in hits:
            by_owner.setdefault(live.owners[state.index[hit[0]]], []).append(hit)
        if not by_owner:
            return NO_EVENTS
        severity, learning, factor = self._learning(state)
        out = []
        for owner, found in by_owner.items():
            k, frac, rows = max(found, key=lambda h: h[1])
            name = live.named_params[state.index[k]][0]
            steps = state.counts[k]
            out.append(self.event(
                "grad.dead_units", record, where=owner, severity=severity,
                title=f"{frac:.0%} of the output units of {name!r} got no gradient for {steps} steps",
                detail=(f"{round(frac * rows)} of the {rows} output units of {name!r} had an exactly-zero "
                        f"gradient on each of the last {steps} steps (threshold "
                        f"{self.min_fraction:.0%}); parameters affected: "
                        f"{name_list([live.named_params[state.index[h[0]]][0] for h in found])}; {learning}."),
                evidence={"fraction": frac, "rows": rows, "steps": steps, "params": len(found),
                          "loss_factor": factor}))
        return out

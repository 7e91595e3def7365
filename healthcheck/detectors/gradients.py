"""Checks on gradients, per module and per parameter, before the optimizer step.

Gradients are where a broken graph shows: a NaN from an eigh backward appears in one
module's gradient while the loss is still finite (docs/failure-catalogue.md row 5), a detached head has
``.grad is None`` (row 9), a clamp zeroes a head's gradient (row 12). Module-level norms
come from ``record.grad_norm`` and so also work offline; parameter-level findings need
the live model (``LiveView.param_grad_stats``, one host sync shared by all detectors).

Row 12 (a share of outputs stuck at a clamp bound) has two signals: the head's gradient
norm falls (``grad.vanishing`` / ``grad.zero`` per module, here) and, if the model
reports it, the share itself (``output.saturated`` in outputs.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..events import HealthEvent
from ..observe import ROOT, LiveView, StepRecord, top_module
from .screens import any_value, module_extremes, not_finite
from .smoothing import ema_series
from .base import (NO_EVENTS, Detector, DetectorState, Streaks, check_float, check_int, finite,
                   finite_module_items, fmt, group_names, module_items, name_list)


class NonFiniteGrad(Detector):
    """A gradient is NaN/inf before the step (``grad.nonfinite``, critical), named by module.

    With a live view every parameter is checked and the offending ones are listed; offline,
    the per-module norms of the record are used. Under AMP (``record.amp`` present) a
    non-finite gradient is the GradScaler's business (it skips the step and lowers the
    scale), so this detector stays silent and ``amp.overflow`` judges the frequency.
    No threshold: one non-finite gradient is enough.
    """

    codes = ("grad.nonfinite",)
    phases = frozenset({"after_backward"})
    memory = 0

    def screen(self, block):
        return any_value(block, "grad_norm", not_finite)

    def check(self, record: StepRecord, state: DetectorState, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.amp is not None:
            return NO_EVENTS
        norms = record.grad_norm
        if norms and all(math.isfinite(v) for v in norms.values()):
            return NO_EVENTS  # a non-finite element would make its module's norm non-finite
        if live is not None:
            stats = live.param_grad_stats()
            bad = [n for n, h, v in zip(stats.names, stats.has_grad, stats.norms)
                   if h and not math.isfinite(v)]
            groups = group_names(bad, [top_module(n) for n in bad])
        else:
            bad_modules = [m for m, v in norms.items() if not math.isfinite(v)]
            named = [m for m in bad_modules if m != "_total"]
            groups = {m: [] for m in (named or bad_modules)}
        out = []
        for module, params in groups.items():
            value = record.grad_norm.get(module, math.nan)
            listed = f" Parameters: {name_list(params)}." if params else ""
            out.append(self.event(
                "grad.nonfinite", record, where=module,
                title=f"non-finite gradient in {module!r} before the optimizer step",
                detail=(f"The gradient of module {module!r} is not finite (norm {value}) at step "
                        f"{record.step}; loss = {fmt(record.loss)}.{listed}"),
                evidence={"params": len(params), "loss": math.nan if record.loss is None else record.loss}))
        return out or NO_EVENTS


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

    codes = ("grad.none",)
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

    codes = ("grad.zero",)
    phases = frozenset({"after_backward"})
    memory = 1

    def screen(self, block):
        return any_value(block, "grad_norm", lambda g: g == 0.0, skip_total=True)

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


class VanishingGrad(Detector):
    """Module gradients are tiny (``grad.vanishing``).

    Two signals, each held ``patience`` steps: a module's norm in (0, ``min_norm``)
    (SageMaker Debugger's VanishingGradient default threshold, 1e-7, there on the mean
    |g|; our per-module L2 norm is larger than a mean, so this is the stricter reading), and
    AUTOTRAINER's test on the first vs. last module: ‖g_first‖/‖g_last‖ < ``ratio``
    (1e-3) while ‖g_first‖ < ``first_max`` (1e-4). Module order is registration order,
    i.e. usually input to output. Exact zeros are ``grad.zero``'s.
    """

    codes = ("grad.vanishing",)
    phases = frozenset({"after_backward"})
    memory = 1

    def screen(self, block):
        # A non-finite module keeps its streak and fewer than two finite ones keep the
        # first/last streak: such rows are looked at. first/last < ratio with first <
        # first_max implies smallest/largest < ratio with smallest < first_max.
        out = any_value(block, "grad_norm", lambda g: ~np.isfinite(g) | ((0.0 < g) & (g < self.min_norm)),
                        skip_total=True)
        if self.ratio is not None:
            lo, hi, count = module_extremes(block, "grad_norm")
            with np.errstate(divide="ignore", invalid="ignore"):
                out |= (count < 2) | ((lo < self.first_max) & ~(lo / hi >= self.ratio))
        return out

    def __init__(self, min_norm: float = 1e-7, ratio: float | None = 1e-3,
                 first_max: float = 1e-4, patience: int = 5) -> None:
        self.min_norm = check_float("min_norm", min_norm, lo=0.0)
        self.ratio = None if ratio is None else check_float("ratio", ratio, lo=0.0, lo_open=True)
        self.first_max = check_float("first_max", first_max, lo=0.0)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> Streaks:
        return Streaks()

    def check(self, record: StepRecord, state: Streaks, live: LiveView | None) -> Sequence[HealthEvent]:
        mods = finite_module_items(record.grad_norm)
        out = []
        for module, v in mods:
            n = state.bump(module, 0.0 < v < self.min_norm)
            if n >= self.patience:
                out.append(self.event(
                    "grad.vanishing", record, where=module,
                    title=f"gradient of {module!r} vanishing: norm {fmt(v)}",
                    detail=f"Module {module!r} had gradient norm below {self.min_norm:g} for {n} steps.",
                    evidence={"grad_norm": v, "steps": n}))
        if self.ratio is not None and len(mods) >= 2:
            (first, g1), (last, gl) = mods[0], mods[-1]
            r = g1 / gl if gl > 0 else math.nan
            n = state.bump("first/last", finite(r) and r < self.ratio and g1 < self.first_max)
            if n >= self.patience:
                out.append(self.event(
                    "grad.vanishing", record, where=first,
                    title=f"gradient of first module {first!r} is {r:.2g}x the last module's",
                    detail=(f"‖g[{first}]‖ = {g1!r}, ‖g[{last}]‖ = {gl!r}: the gradient fades on its "
                            f"way back to the input for {n} steps."),
                    evidence={"first": g1, "last": gl, "ratio": r, "steps": n}))
        return out or NO_EVENTS


class _ExplodeState(Streaks):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.log_ema: dict[str, float] = {}


class ExplodingGrad(Detector):
    """Module gradients blow up (``grad.exploding``).

    Scale-free signals, because a gradient norm's healthy size depends on the loss's scale:
    (a) after ``warmup`` steps, a module's norm above ``growth`` (100) × its running
    geometric mean (EMA of log-norm, ``beta``=0.9); (b) AUTOTRAINER's first/last ratio
    above ``ratio`` for ``patience`` steps. AUTOTRAINER uses 70 on the layers of small dense
    nets; top-level modules differ in size (norms grow ~√size even when healthy), so the
    default here is 1e3. (c) an absolute ``max_norm`` on the global norm, off by default.
    """

    codes = ("grad.exploding",)
    phases = frozenset({"after_backward"})

    def __init__(self, growth: float = 100.0, warmup: int = 10, ratio: float | None = 1e3,
                 patience: int = 5, max_norm: float | None = None, beta: float = 0.9) -> None:
        self.growth = check_float("growth", growth, lo=1.0, lo_open=True)
        self.warmup = check_int("warmup", warmup, 1)
        self.ratio = None if ratio is None else check_float("ratio", ratio, lo=1.0, lo_open=True)
        self.patience = check_int("patience", patience, 1)
        self.max_norm = None if max_norm is None else check_float("max_norm", max_norm, lo=0.0, lo_open=True)
        self.beta = check_float("beta", beta, lo=0.0, hi=1.0)

    def new_state(self) -> _ExplodeState:
        return _ExplodeState()

    def check_block(self, block, rows, state: _ExplodeState):
        """A block with no candidate jump and no first/last excess only moves the running
        levels: they are advanced in numpy (log and EMA agree with the per-record path to
        a few ulps) and nothing is emitted. Any candidate sends the block row by row."""
        names, cols = block.mapping("grad_norm")
        if not names:
            return []  # no norms: every row leaves the state alone
        if block.irregular[rows].any():
            return None
        k = rows.size
        judged = np.arange(state.n + 1, state.n + k + 1) > self.warmup
        log_growth, beta = math.log(self.growth), self.beta
        levels: dict[str, float] = {}
        for name in names:
            v = cols[name][rows]
            valid = np.isfinite(v) & (v > 0)
            if not valid.any():
                continue
            lv = np.log(v[valid])
            start = state.log_ema.get(name)
            ema = ema_series(lv, beta, start)
            before = np.concatenate([[np.inf if start is None else start], ema[:-1]])
            if (judged[valid] & (lv - before > log_growth - 1e-9)).any():
                return None
            levels[name] = float(ema[-1])
        if self.max_norm is not None and "_total" in cols and (cols["_total"][rows] > self.max_norm).any():
            return None
        if self.ratio is not None:
            lo, hi, count = module_extremes(block, "grad_norm")
            with np.errstate(divide="ignore", invalid="ignore"):
                # a non-positive norm makes hi/lo no bound on first/last: row by row then
                if ((count[rows] < 2) | ~(lo[rows] > 0) | ~(hi[rows] / lo[rows] <= self.ratio)).any():
                    return None
            state.counts["first/last"] = 0
        state.n += k
        state.log_ema.update(levels)
        return []

    def check(self, record: StepRecord, state: _ExplodeState, live: LiveView | None) -> Sequence[HealthEvent]:
        norms = record.grad_norm
        if not norms:
            return NO_EVENTS
        state.n += 1
        out = []
        jumps = {}
        log_ema, beta, judged = state.log_ema, self.beta, state.n > self.warmup
        log, isfinite, log_growth = math.log, math.isfinite, math.log(self.growth)
        for module, v in norms.items():
            if v is None or not isfinite(v) or v <= 0:
                continue
            lv = log(v)
            ema = log_ema.get(module)
            if ema is not None and judged and lv - ema > log_growth:
                jumps[module] = (v, math.exp(ema))
            log_ema[module] = lv if ema is None else beta * ema + (1 - beta) * lv
        named = ({m: j for m, j in jumps.items() if m != "_total"} or jumps) if jumps else jumps
        for module, (v, level) in named.items():
            out.append(self.event(
                "grad.exploding", record, where=module,
                title=f"gradient of {module!r} jumped to {fmt(v)} ({v / level:.0f}x its running level)",
                detail=f"Module {module!r}: gradient norm {v!r}, running geometric mean {level!r}.",
                evidence={"grad_norm": v, "level": level, "growth": v / level}))
        total = norms.get("_total")
        if self.max_norm is not None and finite(total) and total > self.max_norm:
            out.append(self.event(
                "grad.exploding", record, where="_total",
                title=f"global gradient norm {fmt(total)} above {self.max_norm:g}",
                detail=f"The global gradient norm is {total!r}, above max_norm={self.max_norm:g}.",
                evidence={"grad_norm": total, "max_norm": self.max_norm}))
        mods = finite_module_items(norms)
        if self.ratio is not None and len(mods) >= 2:
            (first, g1), (last, gl) = mods[0], mods[-1]
            r = g1 / gl if gl > 0 else math.nan
            n = state.bump("first/last", finite(r) and r > self.ratio)
            if n >= self.patience:
                out.append(self.event(
                    "grad.exploding", record, where=first,
                    title=f"gradient of first module {first!r} is {r:.3g}x the last module's",
                    detail=(f"‖g[{first}]‖ = {g1!r}, ‖g[{last}]‖ = {gl!r} for {n} steps: the "
                            "gradient grows on its way back to the input."),
                    evidence={"first": g1, "last": gl, "ratio": r, "steps": n}))
        return out or NO_EVENTS


@dataclass
class _DeadState:
    params: Any = None  # the LiveView.named_params the selection below was made from
    index: tuple[int, ...] = ()  # positions (in named_params) of the weights judged
    probes: tuple[int, ...] = ()  # per judged weight: position of its unit-wise bias, or -1
    counts: list[int] = field(default_factory=list)


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
    """

    codes = ("grad.dead_units",)
    phases = frozenset({"after_backward"})
    needs_live = True

    def __init__(self, min_fraction: float = 0.5, patience: int = 3) -> None:
        self.min_fraction = check_float("min_fraction", min_fraction, lo=0.0, hi=1.0, lo_open=True)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _DeadState:
        return _DeadState()

    def check(self, record: StepRecord, state: _DeadState, live: LiveView | None) -> Sequence[HealthEvent]:
        if live is None:
            return NO_EVENTS
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
        out = []
        for owner, found in by_owner.items():
            k, frac, rows = max(found, key=lambda h: h[1])
            name = live.named_params[state.index[k]][0]
            steps = state.counts[k]
            out.append(self.event(
                "grad.dead_units", record, where=owner,
                title=f"{frac:.0%} of the output units of {name!r} got no gradient for {steps} steps",
                detail=(f"{round(frac * rows)} of the {rows} output units of {name!r} had an exactly-zero "
                        f"gradient on each of the last {steps} steps (threshold "
                        f"{self.min_fraction:.0%}); parameters affected: "
                        f"{name_list([live.named_params[state.index[h[0]]][0] for h in found])}."),
                evidence={"fraction": frac, "rows": rows, "steps": steps, "params": len(found)}))
        return out or NO_EVENTS

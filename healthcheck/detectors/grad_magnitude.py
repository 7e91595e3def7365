"""How large are the gradients? Checks on module gradient norms before the optimizer step.

A NaN from an eigh backward appears in one module's gradient while the loss is still
finite (docs/failure-catalogue.md row 5); norms that fall toward 0 or blow up mean a learning signal that
does not reach the first layers, or one that will throw the weights off. Module-level norms
come from ``record.grad_norm`` and so also work offline.

Row 12 (a share of outputs stuck at a clamp bound) has two signals: the head's gradient
norm falls (``grad.vanishing`` here, ``grad.zero`` in grad_flow.py) and, if the model
reports it, the share itself (``output.saturated`` in outputs.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView, reported_module
from ..record import StepRecord
from .base import (
    NO_EVENTS,
    BlockEvents,
    Detector,
    DetectorState,
    Streaks,
    check_float,
    check_int,
    finite,
    finite_module_items,
    fmt,
    group_names,
    name_list,
)
from .screens import any_value, module_extremes, not_finite
from .smoothing import ema_series

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.columns import MetricBlock


class NonFiniteGrad(Detector):
    """A gradient is NaN/inf before the step (``grad.nonfinite``, critical), named by module.

    With a live view every parameter is checked and the offending ones are listed; offline,
    the per-module norms of the record are used. Under AMP (``record.amp`` present) a
    non-finite gradient is the GradScaler's business (it skips the step and lowers the
    scale), so this detector stays silent and ``amp.overflow`` judges the frequency.
    No threshold: one non-finite gradient is enough.
    """

    codes = (Code("grad.nonfinite", Severity.CRITICAL,
                  meaning="A gradient is NaN or infinite before the optimizer step (module named).",
                  fix="Find the backward of the named module: eigh/SVD with repeated eigenvalues, "
                      "sqrt or log at 0, division by a zero norm; add an epsilon or a safe "
                      "backward."),)
    phases = frozenset({"after_backward"})
    memory = 0

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
            groups = group_names(bad, [reported_module(n, norms) for n in bad])
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

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        return any_value(block, "grad_norm", not_finite)


class VanishingGrad(Detector):
    """Module gradients are tiny (``grad.vanishing``).

    Two signals, each held ``patience`` steps: a module's norm in (0, ``min_norm``)
    (SageMaker Debugger's VanishingGradient default threshold, 1e-7, there on the mean
    |g|; our per-module L2 norm is larger than a mean, so this is the stricter reading), and
    AUTOTRAINER's test on the first vs. last module: ‖g_first‖/‖g_last‖ < ``ratio``
    (1e-3) while ‖g_first‖ < ``first_max`` (1e-4). Module order is registration order,
    i.e. usually input to output. Exact zeros are ``grad.zero``'s.
    """

    codes = (Code("grad.vanishing", Severity.WARNING,
                  meaning="Gradient norms of a module are tiny, or the first module's are tiny "
                          "next to the last's.",
                  fix="Add normalisation or residual paths, change saturating activations, check "
                      "init scale."),)
    phases = frozenset({"after_backward"})
    memory = 1

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

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
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

    codes = (Code("grad.exploding", Severity.WARNING,
                  meaning="A module's gradient norm jumped far above its running level, or the "
                          "first module's gradient dwarfs the last's.",
                  fix="Lower the learning rate, clip gradients, check for a badly scaled input or "
                      "loss term."),)
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

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def check_block(self, block: MetricBlock, rows: np.ndarray, state: _ExplodeState) -> BlockEvents | None:
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

"""Checks on the parameters themselves: are they optimised, do they move, by how much.

The most direct evidence that a model learns is that its parameters change, by a sensible
amount, every applied step. These checks read ``record.update_norm`` (‖Δθ‖ of the step,
per module) and ``record.param_norm`` (‖θ‖ after it), so they work on a metrics file as
well as live; only the optimizer-membership check needs the live optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..events import HealthEvent
from ..observe import LiveView, StepRecord
from .base import (NO_EVENTS, Detector, Streaks, check_float, check_int, finite, fmt,
                   group_names, module_items, name_list)


@dataclass
class _SeenState:
    n_params: int = -1


class NotInOptimizer(Detector):
    """A trainable parameter is in no optimizer param group (``param.not_in_optimizer``).

    Judged at the first record (before the first step: catalogue row 13, an optimizer built
    before some parameters existed) and again whenever the number of trainable parameters
    changes. Events are grouped by owning submodule.
    """

    codes = ("param.not_in_optimizer",)
    phases = frozenset({"after_backward"})
    needs_live = True

    def new_state(self) -> _SeenState:
        return _SeenState()

    def check(self, record: StepRecord, state: _SeenState, live: LiveView | None) -> Sequence[HealthEvent]:
        if live is None or live.optimizer is None or len(live.named_params) == state.n_params:
            return NO_EVENTS
        state.n_params = len(live.named_params)
        held = live.optimizer_param_ids()
        missing = [(n, p, o) for (n, p), o in zip(live.named_params, live.owners) if id(p) not in held]
        if not missing:
            return NO_EVENTS
        numel = {n: p.numel() for n, p, _ in missing}
        out = []
        for owner, names in group_names([n for n, _, _ in missing], [o for _, _, o in missing]).items():
            size = sum(numel[n] for n in names)
            out.append(self.event(
                "param.not_in_optimizer", record, where=owner,
                title=f"{len(names)} trainable parameter(s) of {owner!r} are not in the optimizer",
                detail=(f"{name_list(names)} ({size} values) require grad but belong to no "
                        "optimizer param group: they will never be updated."),
                evidence={"params": len(names), "numel": size}))
        return out


class FrozenParams(Detector):
    """A module's update norm is exactly 0 over ``patience`` applied steps (``param.frozen``).

    DeepDiagnosis's "unchanged weight" symptom, per module and exact: ‖Δθ‖ = 0 means the
    optimizer step changed nothing in that module: learning rate 0,
    gradient 0, or the parameters are not in the optimizer (catalogue rows 2, 3). Steps the
    record marks ``skipped`` don't count either way. 5 steps: a single zero update can be a
    legitimately empty step; five in a row cannot. ``update_norm`` must list trainable
    modules only.
    """

    codes = ("param.frozen",)
    phases = frozenset({"after_step"})

    def __init__(self, patience: int = 5) -> None:
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> Streaks:
        return Streaks()

    def check(self, record: StepRecord, state: Streaks, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.kind != "step" or record.skipped or not record.update_norm:
            return NO_EVENTS
        out = []
        for module, u in module_items(record.update_norm):
            n = state.bump(module, u == 0.0)
            if n >= self.patience:
                out.append(self.event(
                    "param.frozen", record, where=module,
                    title=f"parameters of {module!r} did not move for {n} steps",
                    detail=(f"The update norm of module {module!r} was exactly 0 on each of the "
                            f"last {n} applied steps; lr = {record.lr}."),
                    evidence={"update_norm": u, "steps": n}))
        return out or NO_EVENTS


class UpdateRatio(Detector):
    """‖Δθ‖/‖θ‖ of a module stays outside [``low``, ``high``] (``param.update_ratio``).

    The rule of thumb (Karpathy, CS231n notes) is ~1e-3 per step. SageMaker Debugger's
    WeightUpdateRatio flags < 1e-8 or > 10; those bounds are loose enough to miss a
    learning rate 100x too small (catalogue row 2: 1 % of 2e-6 gives ratios near 1e-6 with
    Adam), so the defaults are 1e-6 (three decades under the rule) and 1.0 (an update as
    large as the weights themselves). 20 consecutive steps, so one odd step or the first
    steps of a warm-up do not fire. Zero updates are ``param.frozen``'s; modules with
    ‖θ‖ = 0 are skipped. Expect it to fire at the very end of schedules that decay to ~0.
    """

    codes = ("param.update_ratio",)
    phases = frozenset({"after_step"})

    def __init__(self, low: float = 1e-6, high: float = 1.0, patience: int = 20) -> None:
        self.low = check_float("low", low, lo=0.0)
        self.high = check_float("high", high, lo=0.0, lo_open=True)
        if self.low >= self.high:
            raise ValueError(f"low must be smaller than high, but got {low=} and {high=}")
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> Streaks:
        return Streaks()

    def check(self, record: StepRecord, state: Streaks, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.kind != "step" or record.skipped or not record.update_norm:
            return NO_EVENTS
        out = []
        for module, u in module_items(record.update_norm):
            w = record.param_norm.get(module)
            if not (finite(u) and finite(w)) or u == 0.0 or w == 0.0:
                state.drop(module)
                continue
            r = u / w
            outside = r < self.low or r > self.high
            n = state.bump(module, outside)
            if n >= self.patience:
                side = "small" if r < self.low else "large"
                bound = self.low if r < self.low else self.high
                out.append(self.event(
                    "param.update_ratio", record, where=module,
                    title=f"update/weight ratio of {module!r} too {side}: {r:.2e}",
                    detail=(f"‖Δθ‖/‖θ‖ of {module!r} = {fmt(u)}/{fmt(w)} = {r:.3g}, beyond {bound:g} "
                            f"for {n} steps (typical: ~1e-3); lr = {record.lr}."),
                    evidence={"ratio": r, "update_norm": u, "param_norm": w, "steps": n}))
        return out or NO_EVENTS

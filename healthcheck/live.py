"""What the training process adds to a step: the model, the optimizer, measured in torch.

`LiveView` hands the model and optimizer to the few checks that need them (which parameter
has ``.grad is None``, which one the optimizer does not hold); `ModuleNorms` and `measure`
turn gradients and updates into the per-module norms a `StepRecord` carries, grouped by
`module_groups`.

Measuring costs host syncs, and a sync per detector per step would make monitoring slower
than training; so every tensor reduction here is batched (``torch._foreach_norm``) and
read back with a single ``.tolist()``, and `LiveView` computes its per-parameter gradient
statistics lazily, once per phase, for all detectors to share.

torch is imported inside the functions that need it: reading metrics files must not.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .record import ROOT, TOTAL

if TYPE_CHECKING:  # pragma: no cover
    import torch


def top_module(name: str) -> str:
    """``"encoder.layers.0.weight"`` → ``"encoder"``; a parameter of the root model → ``"_root"``."""
    head, dot, _ = name.partition(".")
    return head if dot else ROOT


def owner_module(name: str) -> str:
    """``"head.0.weight"`` → ``"head.0"``: the submodule that owns a parameter."""
    owner, dot, _ = name.rpartition(".")
    return owner if dot else ROOT


def reported_module(name: str, modules: Collection[str]) -> str:
    """The module among ``modules`` (the keys of a record's norms) whose norms include
    parameter ``name``: the longest one that is a dotted prefix of it, ``"_root"`` for a
    parameter of the model itself, else the module that owns it."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in modules:
            return prefix
    return owner_module(name)


MAX_GROUPS = 64  # default bound on the modules per-module norms are reported for


def _truncate(owner: str, depth: int) -> str:
    return owner if owner == ROOT else ".".join(owner.split(".")[:depth])


def module_groups(names: Sequence[str], max_groups: int = MAX_GROUPS) -> tuple[tuple[str, ...], int | None]:
    """The module each parameter's norms are reported under, in ``names`` order, and the
    depth names were cut to (None: not cut).

    Each parameter belongs to the deepest module that owns it directly
    (``"transformer.h.0.attn.weight"`` → ``"transformer.h.0.attn"``), so a model that keeps
    everything inside one container still shows its blocks one by one. More than
    ``max_groups`` owners would make every metrics line and every per-module check grow
    with the model; then every name is cut to the deepest dotted depth that leaves at most
    ``max_groups`` groups (``"transformer.h.0"``), which keeps names readable and the
    grouping a function of the names alone. Where even the top-level children are more than
    ``max_groups``, consecutive ones share a group named ``"first..last"``.
    """
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 1:
        raise ValueError(f"max_groups must be an integer >= 1, but got {max_groups=}")
    owners = [owner_module(n) for n in names]
    if len(set(owners)) <= max_groups:
        return tuple(owners), None
    deepest = max(o.count(".") + 1 for o in owners)
    for depth in range(deepest - 1, 0, -1):
        cut = [_truncate(o, depth) for o in owners]
        if len(set(cut)) <= max_groups:
            return tuple(cut), depth
    cut = [_truncate(o, 1) for o in owners]
    tops = list(dict.fromkeys(cut))  # depth 1: the top-level children, in model order
    size = -(-len(tops) // max_groups)
    chunk = {}
    for start in range(0, len(tops), size):
        part = tops[start:start + size]
        label = part[0] if len(part) == 1 else f"{part[0]}..{part[-1]}"
        chunk.update(dict.fromkeys(part, label))
    return tuple(chunk[c] for c in cut), 1


@dataclass(frozen=True)
class GradStats:
    """Per trainable parameter, in `LiveView.named_params` order."""

    names: tuple[str, ...]
    has_grad: tuple[bool, ...]  # False where .grad is None
    norms: tuple[float, ...]  # L2 norm of .grad (float32); NaN where .grad is None


class LiveView:
    """Model and optimizer as in-process detectors may see them, plus shared lazy statistics.

    The monitor calls `begin` at every phase; statistics computed in one phase are reused by
    every detector of that phase and dropped at the next. Detectors must treat the model and
    optimizer as read-only.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        # facts the training process measured for this step beyond norms (see `signals`):
        # {"uncleared_grads": names, "term_reach": {term: (|term|, grad norm)},
        #  "pairing": (true-pairing loss, shuffled-pairing loss)}; absent: not measured
        self.signals: dict[str, object] = {}
        # optimizer steps the run plans, where the loop knows them (a scheduler's total,
        # Lightning's estimated_stepping_batches, the Trainer's max_steps); None: unknown
        self.planned_steps: int | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-list the trainable parameters (after adding modules or unfreezing some)."""
        self.named_params: tuple[tuple[str, torch.nn.Parameter], ...] = tuple(
            (n, p) for n, p in self.model.named_parameters() if p.requires_grad)
        self.names = tuple(n for n, _ in self.named_params)
        self.owners = tuple(owner_module(n) for n, _ in self.named_params)
        self._stats: GradStats | None = None
        self._offered: Sequence[float] | None = None
        self._stamp: tuple[str, int] | None = None

    def begin(self, phase: str, step: int) -> None:
        if (phase, step) != self._stamp:
            self._stamp = (phase, step)
            self._stats = None
            self._offered = None

    def offer_grad_norms(self, phase: str, step: int, norms: Sequence[float]) -> None:
        """Per-parameter gradient norms the training loop already measured in this phase
        (float32, in `names` order; any value where ``.grad`` is None), so that
        `param_grad_stats` does not reduce every gradient a second time: on CPU that
        reduction cost more than all the other per-step work of the monitor together."""
        if len(norms) != len(self.named_params):
            raise ValueError(f"norms must have one value per trainable parameter "
                             f"({len(self.named_params)}), but got {len(norms)=}")
        self.begin(phase, step)
        if self._stats is None:
            self._offered = norms

    def optimizer_param_ids(self) -> frozenset[int]:
        if self.optimizer is None:
            return frozenset()
        return frozenset(id(p) for g in self.optimizer.param_groups for p in g["params"])

    def param_grad_stats(self) -> GradStats:
        """Gradient presence and norm of every trainable parameter: one host sync, cached."""
        if self._stats is None:
            params = [p for _, p in self.named_params]
            has = tuple(p.grad is not None for p in params)
            if self._offered is not None:
                values = self._offered
                self._offered = None
                self._stats = GradStats(names=self.names, has_grad=has,
                                        norms=tuple(v if h else math.nan for v, h in zip(values, has)))
                return self._stats
            norms = iter(per_tensor_norms([p.grad for p in params if p.grad is not None]))
            self._stats = GradStats(
                names=self.names, has_grad=has,
                norms=tuple(next(norms) if h else math.nan for h in has))
        return self._stats


# ---------------------------------------------------------------------------------------
# Fused measurement


# Relative change of a parameter's norm between two steps that counts as a write from
# outside the optimizer; the same float32 reduction of an unchanged tensor gives exactly
# the same value, so this only absorbs a reduction computed in another order.
_MOVED_RTOL = 1e-6


def written(settled: Sequence[float], found: Sequence[float]) -> list[int]:
    """Indices whose norm changed between two reads of the same parameters."""
    return [i for i, (a, b) in enumerate(zip(settled, found))
            if math.isfinite(a) and math.isfinite(b) and abs(a - b) > _MOVED_RTOL * max(abs(a), abs(b))]


def _norm_tensors(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """float32 L2 norms as 0-d tensors on each input's device; no host sync."""
    import torch

    if not tensors:
        return []
    dense = [t.detach() for t in tensors]
    try:
        return list(torch._foreach_norm(dense, 2, dtype=torch.float32))
    except (RuntimeError, NotImplementedError, TypeError):  # sparse grads, exotic layouts
        return [torch.linalg.vector_norm(t.to_dense() if t.is_sparse else t, dtype=torch.float32)
                for t in dense]


def _to_host(values: Sequence[torch.Tensor]) -> list[float]:
    """One .tolist() for a list of 0-d tensors (moved to the first one's device first)."""
    import torch

    if not values:
        return []
    dev = values[0].device
    return torch.stack([v.to(dev, non_blocking=True) for v in values]).tolist()


def per_tensor_norms(tensors: Sequence[torch.Tensor]) -> list[float]:
    """L2 norm of each tensor, computed fused and read back with a single host sync."""
    return _to_host(_norm_tensors(tensors))


class ModuleNorms:
    """Per-module norms of gradients, updates and parameters for the plain-PyTorch helper,
    one value per group of `module_groups` (at most ``max_groups``). Each call costs one
    host sync; update norms cost one copy of the trainable parameters (kept between steps,
    so no allocation per step), off with track_updates=False.

    Call `grad_norms` after backward, `snapshot` before ``optimizer.step()`` and
    `after_step` after it.
    """

    def __init__(self, model: torch.nn.Module, *, track_updates: bool = True,
                 max_groups: int = MAX_GROUPS) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = tuple(n for n, _ in named)  # same order as LiveView.named_params
        self.max_groups = max_groups
        groups, self.depth = module_groups(self.names, max_groups)
        self.modules = tuple(dict.fromkeys(groups))
        index = {m: i for i, m in enumerate(self.modules)}
        self._params = [p for _, p in named]
        self._module_of = [index[g] for g in groups]
        self.members: dict[str, tuple[str, ...]] = {
            m: tuple(n for n, g in zip(self.names, groups) if g == m) for m in self.modules}
        self.track_updates = track_updates
        self._before: list[torch.Tensor] | None = None
        self._have_snapshot = False
        # Per-parameter norms as the last optimizer step left them, and as the snapshot of
        # the next step found them (device tensors, read with that step's norms): a
        # difference means something other than the optimizer wrote the weights in between.
        self._settled: list[float] | None = None
        self._found: list[torch.Tensor] = []
        self.moved_outside: tuple[str, ...] = ()  # groups that changed so, as of the last after_step

    def grouping(self) -> dict[str, object]:
        """What a run dir's modules.json records: the bound, the depth names were cut to
        (None: not cut) and, per group, the parameters whose norms it reports."""
        return {"max_groups": self.max_groups, "depth": self.depth,
                "groups": {m: list(ns) for m, ns in self.members.items()}}

    def _per_module(self, norms: Sequence[float], *, total: bool = False) -> dict[str, float]:
        sq = [0.0] * len(self.modules)
        for n, i in zip(norms, self._module_of):
            sq[i] += n * n
        out = {m: math.sqrt(s) for m, s in zip(self.modules, sq)}
        if total:
            out[TOTAL] = math.sqrt(sum(sq))
        return out

    def grad_norms(self, per_param: Sequence[float] | None = None) -> dict[str, float]:
        """{module: ‖grad‖, "_total": global norm}; a module without any gradient reads 0.

        ``per_param``: norms already computed in `names` order (NaN where .grad is None),
        e.g. ``LiveView.param_grad_stats().norms``, so gradients are not reduced twice.
        """
        if per_param is None or len(per_param) != len(self._params):
            grads = [p.grad for p in self._params]
            read = iter(per_tensor_norms([g for g in grads if g is not None]))
            per_param = [math.nan if g is None else next(read) for g in grads]
        # NaN stands for "no gradient" here (contributes 0); a NaN gradient has a .grad
        return self._per_module([0.0 if p.grad is None else n for n, p in zip(per_param, self._params)],
                                total=True)

    def snapshot(self) -> None:
        """Remember the parameters as they are before the optimizer step."""
        if not self.track_updates or not self._params:
            return
        import torch

        with torch.no_grad():
            if self._before is None:
                self._before = [p.detach().clone() for p in self._params]
            else:
                torch._foreach_copy_(self._before, [p.detach() for p in self._params])
        self._found = _norm_tensors(self._before) if self._settled is not None else []
        self._have_snapshot = True

    def after_step(self) -> tuple[dict[str, float], dict[str, float]]:
        """(update norms, parameter norms) per module; update norms are empty without a
        snapshot taken since the previous call."""
        import torch

        current = [p.detach() for p in self._params]
        before = self._before if self._have_snapshot else None
        if before is not None:
            with torch.no_grad():
                torch._foreach_sub_(before, current)  # before - after, in place
        have_update = before is not None
        found = self._found if have_update else []
        values = _to_host(_norm_tensors(current + (before or [])) + found)
        self._have_snapshot = False
        self._found = []
        n = len(self._params)
        params = self._per_module(values[:n])
        updates = self._per_module(values[n:2 * n]) if have_update else {}
        self.moved_outside = self._changed_since_settled(values[2 * n:]) if found else ()
        self._settled = values[:n]
        return updates, params

    def _changed_since_settled(self, found: Sequence[float]) -> tuple[str, ...]:
        """Groups with a parameter whose norm at the snapshot differs from the norm the last
        step left: the same tensor, read the same way, so any difference is a write."""
        moved = {self.modules[self._module_of[i]] for i in written(self._settled or [], found)}
        return tuple(m for m in self.modules if m in moved)


def measure(model: torch.nn.Module, max_groups: int = MAX_GROUPS) -> dict[str, float]:
    """Per-module gradient norms of ``model`` right now (`module_groups`; one host sync)."""
    return ModuleNorms(model, track_updates=False, max_groups=max_groups).grad_norms()

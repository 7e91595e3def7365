"""What one step of training looks like to a detector.

Two views, because detectors run in two places. `StepRecord` is the plain data of one
metrics.jsonl line (docs/run-dir.md): numbers only, so the same detectors judge a live run
and, later, a file on disk. `LiveView` adds what only the training process has (the model
and the optimizer) for the few checks that need them (which parameter has ``.grad is
None``, which one the optimizer does not hold).

Measuring costs host syncs, and a sync per detector per step would make monitoring slower
than training; so every tensor reduction here is batched (``torch._foreach_norm``) and
read back with a single ``.tolist()``, and `LiveView` computes its per-parameter gradient
statistics lazily, once per phase, for all detectors to share.

torch is imported inside the functions that need it: reading metrics files must not.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time as _time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ._jsonl import AppendWriter, read_jsonl

if TYPE_CHECKING:  # pragma: no cover
    import torch

METRICS_SCHEMA = 1
KINDS = ("step", "epoch", "eval")
ROOT = "_root"  # module name for parameters registered directly on the top-level model
TOTAL = "_total"  # key of the global norm in grad_norm


def _float(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool):
        return float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _float_map(d: Any) -> dict[str, float]:
    if type(d) is dict:  # what JSON and the trainers hand over; typing.Mapping checks are slow
        try:
            return {str(k): float(v) for k, v in d.items()}
        except (TypeError, ValueError):
            pass  # a None or a non-number: the general path drops it
    elif d is None:
        return {}
    if not isinstance(d, Mapping):
        return {}
    out = {}
    for k, v in d.items():
        f = _float(v)
        if f is not None:
            out[str(k)] = f
    return out


@dataclass(slots=True)
class StepRecord:
    """One metrics line, step / epoch / eval. Absent measurements are empty or None, never 0:
    a detector must read "not measured" as "cannot judge", not as "zero"."""

    kind: str = "step"
    step: int = 0  # batches seen before this one, 0-based, across the whole run
    epoch: int = 0
    time: float = field(default_factory=_time.time)
    loss: float | None = None  # the value that was back-propagated (weighted total)
    terms: dict[str, float] = field(default_factory=dict)  # unweighted terms
    weights: dict[str, float] = field(default_factory=dict)  # effective weight per term
    weight_sources: dict[str, str] = field(default_factory=dict)  # who set each weight
    primary: str | None = None  # the term that carries the main learning signal
    lr: list[float] = field(default_factory=list)  # per optimizer param group
    grad_norm: dict[str, float] = field(default_factory=dict)  # per top-level module + "_total"
    update_norm: dict[str, float] = field(default_factory=dict)  # ‖Δθ‖ per module, this step
    param_norm: dict[str, float] = field(default_factory=dict)  # ‖θ‖ per module, after the step
    amp: dict[str, Any] | None = None  # {"scale": float, "found_inf": bool} with a GradScaler
    steps_taken: int | None = None  # optimizer steps applied so far
    batches_seen: int | None = None  # batches processed so far
    skipped: bool | None = None  # this step was not applied
    metrics: dict[str, float] = field(default_factory=dict)  # eval metrics, extra signals
    rank: int = 0
    schema: int = METRICS_SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, but got {self.kind=}")

    @classmethod
    def from_metrics_line(cls, line: Mapping[str, Any]) -> "StepRecord":
        """Build from a metrics.jsonl object; tolerant of missing optional fields, of a
        scalar ``lr``, and of keys it does not know (kept in ``extra``)."""
        if cls is StepRecord and type(line) is dict:
            return _record_from_dict(line)
        known = _FIELDS
        extra = {k: v for k, v in line.items() if k not in known}
        kind = line.get("kind", "step")
        amp = line.get("amp")
        if isinstance(amp, Mapping):
            amp = {"scale": _float(amp.get("scale")), "found_inf": amp.get("found_inf")}
        else:
            amp = None
        lr = line.get("lr")
        if lr is None:
            lr = []
        elif not isinstance(lr, (list, tuple)):
            lr = [lr]
        return cls(
            kind=kind if kind in KINDS else "step",
            step=int(line.get("step") or 0),
            epoch=int(line.get("epoch") or 0),
            time=_float(line.get("time")) or 0.0,
            loss=_float(line.get("loss")),
            terms=_float_map(line.get("terms")),
            weights=_float_map(line.get("weights")),
            weight_sources={str(k): str(v) for k, v in (line.get("weight_sources") or {}).items()},
            primary=line.get("primary"),
            lr=[f for f in (_float(x) for x in lr) if f is not None],
            grad_norm=_float_map(line.get("grad_norm")),
            update_norm=_float_map(line.get("update_norm")),
            param_norm=_float_map(line.get("param_norm")),
            amp=amp,
            steps_taken=_int_or_none(line.get("steps_taken")),
            batches_seen=_int_or_none(line.get("batches_seen")),
            skipped=None if line.get("skipped") is None else bool(line.get("skipped")),
            metrics=_float_map(line.get("metrics")),
            rank=int(line.get("rank") or 0),
            schema=int(line.get("schema") or METRICS_SCHEMA),
            extra=extra,
        )

    def to_metrics_line(self) -> dict[str, Any]:
        """The metrics.jsonl object: the always-present keys, then every measured field."""
        out: dict[str, Any] = {"schema": self.schema, "kind": self.kind, "step": self.step,
                               "epoch": self.epoch, "time": self.time, "rank": self.rank}
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is None or (isinstance(value, (dict, list)) and not value):
                continue
            out[name] = value
        if self.kind == "step" and "primary" not in out:
            out["primary"] = None
        out.update(self.extra)
        return out


def _int_or_none(x: Any) -> int | None:
    return None if x is None else int(x)


_FIELDS = frozenset(f.name for f in dataclasses.fields(StepRecord)) - {"extra"}
_OPTIONAL = ("loss", "terms", "weights", "weight_sources", "primary", "lr", "grad_norm",
             "update_norm", "param_norm", "amp", "steps_taken", "batches_seen", "skipped",
             "metrics")
_new_record = object.__new__


def _record_from_dict(line: dict[str, Any]) -> StepRecord:
    """`StepRecord.from_metrics_line` for a plain dict, the one every reader and trainer
    hands over: a metrics file is read at ~1M lines per scan and a live run builds a
    record per phase, so this skips the keyword call, the kind check (the kind is
    normalised here) and the ``typing.Mapping`` checks. Every value of an exact type
    (int, float, dict, list, None) is converted inline to what the general path would
    make of it; anything else goes through the same helpers, in the same order, so a
    bad value raises the same error."""
    get = line.get
    extra = {} if line.keys() <= _FIELDS else {k: v for k, v in line.items() if k not in _FIELDS}
    kind = get("kind", "step")
    amp = get("amp")
    if amp is not None:
        if type(amp) is dict or isinstance(amp, Mapping):
            scale = amp.get("scale")
            amp = {"scale": scale if type(scale) is float else _float(scale), "found_inf": amp.get("found_inf")}
        else:
            amp = None
    lr = get("lr")
    r = _new_record(StepRecord)
    r.kind = kind if kind in KINDS else "step"
    x = get("step")
    r.step = x if type(x) is int else int(x or 0)
    x = get("epoch")
    r.epoch = x if type(x) is int else int(x or 0)
    x = get("time")
    r.time = (x or 0.0) if type(x) is float else (_float(x) or 0.0)
    x = get("loss")
    r.loss = x if type(x) is float or x is None else _float(x)
    r.terms = _float_map(get("terms"))
    r.weights = _float_map(get("weights"))
    x = get("weight_sources")
    r.weight_sources = ({str(k): str(v) for k, v in x.items()} if type(x) is dict
                        else {str(k): str(v) for k, v in (x or {}).items()})
    r.primary = get("primary")
    if type(lr) is list:
        try:
            r.lr = [float(v) for v in lr]
        except (TypeError, ValueError):
            r.lr = [f for f in (_float(v) for v in lr) if f is not None]
    elif lr is None:
        r.lr = []
    else:
        r.lr = [f for f in (_float(v) for v in (lr if isinstance(lr, (list, tuple)) else [lr])) if f is not None]
    r.grad_norm = _float_map(get("grad_norm"))
    r.update_norm = _float_map(get("update_norm"))
    r.param_norm = _float_map(get("param_norm"))
    r.amp = amp
    x = get("steps_taken")
    r.steps_taken = x if type(x) is int or x is None else int(x)
    x = get("batches_seen")
    r.batches_seen = x if type(x) is int or x is None else int(x)
    x = get("skipped")
    r.skipped = x if type(x) is bool or x is None else bool(x)
    r.metrics = _float_map(get("metrics"))
    x = get("rank")
    r.rank = x if type(x) is int else int(x or 0)
    x = get("schema")
    r.schema = (x or METRICS_SCHEMA) if type(x) is int else int(x or METRICS_SCHEMA)
    r.extra = extra
    return r


def as_record(obj: "StepRecord | Mapping[str, Any]") -> StepRecord:
    return obj if isinstance(obj, StepRecord) else StepRecord.from_metrics_line(obj)


class MetricsWriter:
    """Appends records to metrics.jsonl: one line each, flushed (not fsynced: a lost last
    metrics line costs nothing, an fsync per step costs throughput)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self._out = AppendWriter(path, fsync=False)
        self.path = self._out.path

    def write(self, record: "StepRecord | Mapping[str, Any]") -> None:
        self._out.write(record.to_metrics_line() if isinstance(record, StepRecord) else record)

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike) -> list[StepRecord]:
    """Every complete metrics line of a file as a `StepRecord` (torn and garbage lines skipped)."""
    return [StepRecord.from_metrics_line(obj) for obj in read_jsonl(path).objects]


# ---------------------------------------------------------------------------------------
# Live view


def top_module(name: str) -> str:
    """``"encoder.layers.0.weight"`` → ``"encoder"``; a parameter of the root model → ``"_root"``."""
    head, dot, _ = name.partition(".")
    return head if dot else ROOT


def owner_module(name: str) -> str:
    """``"head.0.weight"`` → ``"head.0"``: the submodule that owns a parameter."""
    owner, dot, _ = name.rpartition(".")
    return owner if dot else ROOT


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

    def __init__(self, model: "torch.nn.Module", optimizer: "torch.optim.Optimizer | None" = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.refresh()

    def refresh(self) -> None:
        """Re-list the trainable parameters (after adding modules or unfreezing some)."""
        self.named_params: tuple[tuple[str, "torch.nn.Parameter"], ...] = tuple(
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


def _norm_tensors(tensors: Sequence["torch.Tensor"]) -> list["torch.Tensor"]:
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


def _to_host(values: Sequence["torch.Tensor"]) -> list[float]:
    """One .tolist() for a list of 0-d tensors (moved to the first one's device first)."""
    import torch

    if not values:
        return []
    dev = values[0].device
    return torch.stack([v.to(dev, non_blocking=True) for v in values]).tolist()


def per_tensor_norms(tensors: Sequence["torch.Tensor"]) -> list[float]:
    """L2 norm of each tensor, computed fused and read back with a single host sync."""
    return _to_host(_norm_tensors(tensors))


class ModuleNorms:
    """Per-top-level-module norms of gradients, updates and parameters for the plain-PyTorch
    helper. Each call costs one host sync; update norms cost one copy of the trainable
    parameters (kept between steps, so no allocation per step), off with track_updates=False.

    Call `grad_norms` after backward, `snapshot` before ``optimizer.step()`` and
    `after_step` after it.
    """

    def __init__(self, model: "torch.nn.Module", *, track_updates: bool = True) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = tuple(n for n, _ in named)  # same order as LiveView.named_params
        self.modules = tuple(dict.fromkeys(top_module(n) for n in self.names))
        index = {m: i for i, m in enumerate(self.modules)}
        self._params = [p for _, p in named]
        self._module_of = [index[top_module(n)] for n in self.names]
        self.track_updates = track_updates
        self._before: list["torch.Tensor"] | None = None
        self._have_snapshot = False

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
        self._have_snapshot = True

    def after_step(self) -> tuple[dict[str, float], dict[str, float]]:
        """(update norms, parameter norms) per module; update norms are empty without a
        snapshot taken since the previous call."""
        import torch

        current = [p.detach() for p in self._params]
        have_update = self._have_snapshot and self._before is not None
        if have_update:
            with torch.no_grad():
                torch._foreach_sub_(self._before, current)  # before - after, in place
        values = _to_host(_norm_tensors(current + (self._before if have_update else [])))
        self._have_snapshot = False
        n = len(self._params)
        params = self._per_module(values[:n])
        updates = self._per_module(values[n:]) if have_update else {}
        return updates, params


def measure(model: "torch.nn.Module") -> dict[str, float]:
    """Per-top-level-module gradient norms of ``model`` right now (one host sync)."""
    return ModuleNorms(model, track_updates=False).grad_norms()


def iter_records(objs: Iterable["StepRecord | Mapping[str, Any]"]) -> Iterable[StepRecord]:
    for obj in objs:
        yield as_record(obj)

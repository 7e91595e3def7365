"""What one step of training looks like to a detector, as plain data.

`StepRecord` is the content of one metrics.jsonl line (docs/run-dir.md): numbers only, so
the same detectors judge a live run and, later, a file on disk. `MetricsWriter` appends
records to metrics.jsonl and `read_records` reads them back, on the timeline a resumed
run leaves (`resumed_timeline`); the live torch side (the model and optimizer a few
checks need) is `healthcheck.live`.
"""

from __future__ import annotations

import dataclasses
import os
import time as _time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .jsonl import AppendWriter, read_jsonl

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
    def from_metrics_line(cls, line: Mapping[str, Any]) -> StepRecord:
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


def as_record(obj: StepRecord | Mapping[str, Any]) -> StepRecord:
    return obj if isinstance(obj, StepRecord) else StepRecord.from_metrics_line(obj)


class MetricsWriter:
    """Appends records to metrics.jsonl: one line each, flushed (not fsynced: a lost last
    metrics line costs nothing, an fsync per step costs throughput)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._out = AppendWriter(path, fsync=False)
        self.path = self._out.path

    def write(self, record: StepRecord | Mapping[str, Any]) -> None:
        self._out.write(record.to_metrics_line() if isinstance(record, StepRecord) else record)

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: str | os.PathLike[str]) -> list[StepRecord]:
    """Every complete metrics line of a file as a `StepRecord` (torn and garbage lines
    skipped), on the resumed timeline (`resumed_timeline`)."""
    return [StepRecord.from_metrics_line(obj) for obj in resumed_timeline(read_jsonl(path).objects)]


RESUME = "resume"  # the kind of the line a resumed run writes first (docs/run-dir.md)


def resumed_timeline(lines: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The lines of a metrics file as one run that never stopped.

    A run resumed from a checkpoint taken after S batches first writes ``{"kind":
    "resume", "step": S}``; the steps, epochs and evals logged before it at step >= S
    were redone after it (a kill -9 loses everything since the last checkpoint), so they
    are dropped, and so is the marker. Lines of other kinds (``stop``) are kept.
    """
    kept: list[Mapping[str, Any]] = []
    for line in lines:
        if line.get("kind") != RESUME:
            kept.append(line)
            continue
        start = line.get("step")
        if isinstance(start, bool) or not isinstance(start, (int, float)):
            continue  # a marker without a usable step says nothing about what it replaces
        kept = [old for old in kept
                if old.get("kind", "step") not in KINDS or not _at_or_after(old.get("step"), start)]
    return kept


def _at_or_after(step: Any, start: float) -> bool:
    return isinstance(step, (int, float)) and not isinstance(step, bool) and step >= start


def iter_records(objs: Iterable[StepRecord | Mapping[str, Any]]) -> Iterable[StepRecord]:
    for obj in objs:
        yield as_record(obj)

"""Health events: what a detector found and how bad it is, and their health.jsonl file.

Every finding is a `HealthEvent` carrying a stable code; what each code means, its default
severity and its usual fix live in the registry (`healthcheck.codes`), so the message a
user sees and the table in docs/events.md come from one place.
"""

from __future__ import annotations

import enum
import math
import os
import time as _time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .jsonl import AppendWriter, dumps, read_jsonl

SCHEMA = 1  # version of the health.jsonl line format (docs/run-dir.md)


class Severity(enum.IntEnum):
    """How bad a finding is. Ordered, so ``severity >= Severity.ERROR`` reads naturally."""

    INFO = 10  # worth recording, not worth interrupting anyone
    WARNING = 20  # probably wrong; training can go on, a person should look
    ERROR = 30  # training is not doing what it should; wasted compute from here on
    CRITICAL = 40  # the next optimizer step would damage the model (NaN, primary weight 0)

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        """``"warning"``, ``"WARNING"`` or ``Severity.WARNING`` → ``Severity.WARNING``."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = cls.__members__.get(value.strip().upper())
            if member is not None:
                return member
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, but got {value!r}")


SEVERITIES = tuple(str(s) for s in Severity)


# ---------------------------------------------------------------------------------------
def _number(name: str, value: Any) -> float | int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"evidence values must be numbers, but got {name}={value!r}") from None


@dataclass(frozen=True)
class HealthEvent:
    """One finding. Immutable: the monitor makes copies to set ``count`` or re-grade.

    ``evidence`` holds the numbers that made the detector fire, so a reader can judge the
    finding without the run; ``where`` names the module, parameter, term or weight.
    """

    code: str
    severity: Severity
    step: int | None = None
    epoch: int | None = None
    time: float = field(default_factory=_time.time)
    title: str = ""
    detail: str = ""
    evidence: Mapping[str, float] = field(default_factory=dict)
    where: str | None = None
    hint: str = ""
    rank: int = 0
    count: int = 1  # occurrences folded into this event (the monitor de-duplicates)
    source: str = "monitor"  # "monitor" in-process, "watch" when judged from metrics.jsonl

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity.parse(self.severity))
        object.__setattr__(self, "evidence",
                           {str(k): _number(str(k), v) for k, v in self.evidence.items()})
        if self.count < 1:
            raise ValueError(f"count must be >= 1, but got {self.count=}")

    def with_(self, **changes: Any) -> HealthEvent:
        """A copy with some fields changed (``event.with_(count=3)``)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA}
        out.update(asdict(self))
        out["severity"] = str(self.severity)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthEvent:
        """Inverse of `to_dict`. Unknown keys (a newer schema) are ignored, not fatal."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "code" not in kwargs or "severity" not in kwargs:
            raise ValueError(f"a health event needs 'code' and 'severity', but got keys {sorted(data)}")
        kwargs["evidence"] = dict(kwargs.get("evidence") or {})
        if kwargs.get("time") is None:
            kwargs["time"] = math.nan
        return cls(**kwargs)

    def to_json(self) -> str:
        return dumps(self.to_dict())

    def line(self) -> str:
        """One human line: ``ERROR grad.none @head.0 step 12: title — hint``."""
        where = f" @{self.where}" if self.where else ""
        when = f" step {self.step}" if self.step is not None else (
            f" epoch {self.epoch}" if self.epoch is not None else "")
        times = f" (x{self.count})" if self.count > 1 else ""
        hint = f" — {self.hint}" if self.hint else ""
        return f"{str(self.severity).upper()} {self.code}{where}{when}{times}: {self.title}{hint}"


# ---------------------------------------------------------------------------------------
class HealthLogWriter:
    """Appends events to health.jsonl, one per line, flushed and fsynced per event.

    fsync per event because events are rare and are exactly what a post-mortem needs after
    the process dies (OOM, preemption); metrics lines are not fsynced.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._out = AppendWriter(path, fsync=True)
        self.path = self._out.path

    def write(self, event: HealthEvent) -> None:
        self._out.write(event.to_dict())

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> HealthLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: str | os.PathLike[str]) -> list[HealthEvent]:
    """All events in a health.jsonl, skipping a torn last line and garbage lines.

    Garbage (not JSON, or not an event) is reported once with a warning and skipped.
    """
    chunk = read_jsonl(path)
    events, bad = [], list(chunk.garbage)
    for obj in chunk.objects:
        try:
            events.append(HealthEvent.from_dict(obj))
        except (TypeError, ValueError):
            bad.append(-1)
    if bad:
        warnings.warn(f"{os.fspath(path)}: skipped {len(bad)} line(s) that are not health events",
                      RuntimeWarning, stacklevel=2)
    return events


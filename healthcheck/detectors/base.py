"""The contract every detector follows.

A detector is one check, ~50 lines: ``__init__`` validates its settings (an error prints
the bad value), and ``check`` looks at one record and returns the events it finds.

The contract of ``check(record, state, live)``:

* ``record`` (a `StepRecord`) and ``live`` (a `LiveView` or None) are read-only.
* ``state`` is the object this detector's ``new_state()`` returned. The monitor owns it,
  keeps one per detector, and hands it back on every call; ``check`` may update it and
  has no other side effect. So a detector instance holds only settings and can be shared,
  and the same instance judges a live run and a metrics file (each with its own state).
* Absent measurements (empty dicts, None) mean "not measured": stay silent, never read
  them as zero.
* Return a sequence of `HealthEvent` (an empty tuple when all is well). Returning the same
  finding on every step is fine: the monitor folds repeats into one event with a count.

Class attributes say what a detector emits and where it runs:

* ``codes``: the event codes it may emit, each declared as a `Code` with its default
  severity, meaning and fix; defining the class registers them in `healthcheck.codes.CODES`
  (a plain string names a code registered elsewhere, e.g. with ``register_code``).
* ``phases``: a subset of `PHASES`. "after_backward" sees gradients before the optimizer
  step, so checks that must stop a step (non-finite values, a zero primary weight) run
  there; "after_step" sees update norms; "epoch" and "eval" see epoch means and validation.
* ``needs_live``: True if it reads the model or optimizer. Such detectors are skipped when
  judging a metrics file offline (``monitor.judge_records``), and when no `LiveView` is
  handed to the monitor.

Judging a long metrics file (``Monitor.observe_block``) may skip rows, if the detector
says which ones it must see. ``screen(block)`` returns a boolean mask over a
`MetricBlock`'s rows that must include every row on which ``check`` would emit or would
change its state other than as ``memory`` allows: after ``memory`` consecutive rows the
screen passed over, the state must be what ``check`` on those rows alone leaves (0: the
detector keeps no state; 1: a passed-over row resets it, e.g. a streak back to 0). A mask
that flags too much only costs time; one that flags too little changes the verdict, so
the equivalence tests run every screen against the record-by-record path.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

from ..codes import CODES, Code, declare
from ..events import HealthEvent, Severity

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..blocks.columns import MetricBlock
    from ..live import LiveView
    from ..record import StepRecord

PHASES = ("after_backward", "after_step", "epoch", "eval")
BlockEvents = list[tuple[int, HealthEvent]]  # what check_block finds: (row, event) pairs
NO_EVENTS: tuple[HealthEvent, ...] = ()


class DetectorState:
    """A blank per-detector namespace; detectors that keep history subclass it or set
    attributes in ``new_state``."""

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{type(self).__name__}({vars(self)})"


class Streaks(DetectorState):
    """Consecutive-hit counters by key: the patience bookkeeping most detectors need."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def bump(self, key: str, hit: bool) -> int:
        """Count one more consecutive hit for ``key`` (or reset it); return the streak."""
        n = self.counts[key] = self.counts.get(key, 0) + 1 if hit else 0
        return n

    def drop(self, key: str) -> None:
        """Forget ``key`` (it was not judged this time)."""
        self.counts.pop(key, None)


class Detector:
    """Base class: settings in ``__init__``, one check in ``check``.

    Methods come in one order in every detector: settings and ``__init__``, ``new_state``,
    ``check`` (the rule), then the bulk path (``screen``, ``check_block``) in a section of
    its own, because the rule should read before its speed-up.
    """

    codes: ClassVar[tuple[str, ...]] = ()
    phases: ClassVar[frozenset[str]] = frozenset()
    needs_live: ClassVar[bool] = False
    memory: ClassVar[int | None] = None  # None: no screen, every row is checked

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declare(*(c for c in cls.__dict__.get("codes", ()) if isinstance(c, Code)))

    @property
    def name(self) -> str:
        return type(self).__name__

    def new_state(self) -> Any:
        return DetectorState()

    def check(self, record: StepRecord, state: Any, live: LiveView | None) -> Sequence[HealthEvent]:
        raise NotImplementedError

    def screen(self, block: MetricBlock) -> np.ndarray | None:
        """Rows of ``block`` this detector must see (see the module doc); None: all."""
        return None

    def check_block(self, block: MetricBlock, rows: np.ndarray, state: Any) -> BlockEvents | None:
        """Judge ``rows`` of ``block`` in bulk: [(row, event), ...], or None to let the
        monitor run ``check`` row by row."""
        return None

    def event(self, code: str, record: StepRecord, *, title: str, detail: str = "",
              evidence: Mapping[str, float | None] | None = None, where: str | None = None,
              severity: Severity | str | None = None) -> HealthEvent:
        """An event stamped with the record's step, epoch, time and rank and the code's
        default severity and fix text. An evidence value that was not measured (None) is
        written as NaN rather than failing the detector."""
        info = CODES[code]
        if severity is not None and Severity.parse(severity) not in (info.severity, *info.raised_to):
            raise ValueError(
                f"{self.name} emits {code!r} at {Severity.parse(severity)}, a tier the code does not declare "
                f"(default {info.severity}, raised to {[str(s) for s in info.raised_to]}): add it to the "
                "Code(...) declaration so the codes table shows it")
        numbers = {k: math.nan if v is None else v for k, v in (evidence or {}).items()}
        return HealthEvent(
            code=code, severity=info.severity if severity is None else Severity.parse(severity),
            step=record.step, epoch=record.epoch, time=record.time, title=title,
            detail=detail, evidence=numbers, where=where, hint=info.fix,
            rank=record.rank)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{self.name}({settings})"


# -- argument checks shared by detectors (errors print the bad value) --------------------
class LossSinceStart:
    """The median of a run's first ``n`` finite losses against the median of its last ``n``:
    whether training has lowered the loss, robust to single noisy batches."""

    def __init__(self, n: int = 10) -> None:
        self.n = n
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=n)

    def add(self, loss: float | None) -> None:
        if not finite(loss):
            return
        if len(self.first) < self.n:
            self.first.append(loss)
        self.recent.append(loss)

    @property
    def start(self) -> float:
        return statistics.median(self.first) if self.first else math.nan

    @property
    def now(self) -> float:
        return statistics.median(self.recent) if self.recent else math.nan

    def fell(self, min_drop: float) -> bool:
        """The loss is now more than ``min_drop`` (a fraction) below its start."""
        return bool(self.first) and self.now < (1.0 - min_drop) * self.start


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, but got {name}={value!r}")
    return value


def check_float(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, but got {name}={value!r}") from None
    if not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) or (
            hi is not None and v > hi):
        bound = f"{'>' if lo_open else '>='} {lo}" if lo is not None else ""
        if hi is not None:
            bound = f"{bound} and <= {hi}" if bound else f"<= {hi}"
        raise ValueError(f"{name} must be a finite number {bound}, but got {name}={value!r}")
    return v


def finite(x: float | None) -> TypeGuard[float]:
    return x is not None and math.isfinite(x)


def fmt(x: float | None) -> str:
    """Numbers in messages: short, but enough digits to tell 1e-8 from 0."""
    if x is None:
        return "n/a"
    return f"{x:.4g}"


def module_items(norms: Mapping[str, float]) -> Iterator[tuple[str, float]]:
    """(module, value) pairs of a per-module norm dict, without the global "_total"."""
    return ((k, v) for k, v in norms.items() if k != "_total")


def finite_module_items(norms: Mapping[str, float]) -> list[tuple[str, float]]:
    """`module_items` with finite values only, as a list: built in one comprehension
    because gradient detectors need it on every record of a million-line file."""
    isfinite = math.isfinite
    return [(k, v) for k, v in norms.items() if k != "_total" and v is not None and isfinite(v)]


def group_names(names: Sequence[str], owners: Sequence[str]) -> dict[str, list[str]]:
    """Parameter names grouped by owning submodule, keeping first-seen order."""
    out: dict[str, list[str]] = {}
    for n, o in zip(names, owners):
        out.setdefault(o, []).append(n)
    return out


def name_list(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")

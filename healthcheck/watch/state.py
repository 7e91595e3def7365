"""What the live view shows of a run: the latest lines and a short history, nothing more.

`RunState` is updated with every metrics line but keeps a fixed amount: the last step,
epoch and eval lines, the last `history` losses for the sparkline, and a window of
(time, step) pairs for the rate. Reading a million-line file leaves it the same size.
"""

from __future__ import annotations

import math
import time as _time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .reading.fields import kind_of, mapping, number, numbers, step_of

_RATE_WINDOW = 50  # step lines the rate is averaged over: smooth, yet follows a slowdown


def _num(x: Any) -> float | None:
    """A number to show, or None (not a number, or an int no float holds)."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return None
    try:
        return float(x)
    except OverflowError:
        return None


def term_shares(line: Mapping[str, Any]) -> dict[str, float]:
    """Each term's weighted share of the total: weight * term / loss.

    Shares sum to 1 when the loss is exactly the weighted sum; a share that is 0 while
    its term is not (a weight of 0) or a total that is 0 while terms are not are the
    signals of a mis-wired loss, so the view shows them as they are, not normalised.
    """
    loss = _num(line.get("loss"))
    terms = mapping(line.get("terms"))
    weights = mapping(line.get("weights"))
    out = {}
    for name, v in terms.items():
        w = weights.get(name)
        if w is None:
            continue
        if loss is None or loss == 0 or not math.isfinite(loss):
            out[name] = math.nan
        else:
            out[name] = w * v / loss
    return out


@dataclass
class RunState:
    """The latest picture of one run, as far as its files have been read."""

    name: str
    history: int = 60
    last_step: dict | None = None
    last_epoch: dict | None = None
    last_eval: dict | None = None
    lines: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    bad_lines: int = 0
    first_seen: float | None = None  # wall clock of the first line read, for lines without time
    updated: float | None = None  # wall clock of the last line read
    losses: deque = field(init=False)
    _rate: deque = field(init=False)

    def __post_init__(self) -> None:
        if self.history < 2:
            raise ValueError(f"history must be at least 2, but got {self.history=}")
        self.losses = deque(maxlen=self.history)
        self._rate = deque(maxlen=_RATE_WINDOW)

    def add(self, line: Mapping[str, Any], now: float | None = None) -> None:
        now = _time.time() if now is None else now
        self.lines += 1
        self.updated = now
        if self.first_seen is None:
            self.first_seen = now
        kind = kind_of(line.get("kind"))
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind == "step":
            self._take_step(line)
        elif kind == "epoch":
            self.last_epoch = line
        elif kind == "eval":
            self.last_eval = line

    def skip(self, n: int = 1) -> None:
        """Count lines read that nobody shows: rows the judging could not read as records
        (reported as bad lines). The view, the verdict and the report see the same rows."""
        self.lines += n

    def add_many(self, lines: Sequence[Mapping[str, Any]], now: float | None = None,
                 kinds: list[str] | None = None) -> None:
        """`add` for consecutive lines, touching only the last of each kind and the tails
        the history and the rate keep (``kinds``, when the caller knows them, spares
        reading every line)."""
        if not lines:
            return
        now = _time.time() if now is None else now
        self.lines += len(lines)
        self.updated = now
        if self.first_seen is None:
            self.first_seen = now
        if kinds is None:
            kinds = [kind_of(line.get("kind")) for line in lines]
        present = set(kinds)
        for kind in present:
            self.kinds[kind] = self.kinds.get(kind, 0) + kinds.count(kind)
        keep = max(self.history, _RATE_WINDOW)
        steps: list[Mapping[str, Any]] = []
        epoch_seen = eval_seen = False
        for i in range(len(lines) - 1, -1, -1):
            kind = kinds[i]
            if kind == "step":
                if len(steps) < keep:
                    steps.append(lines[i])
            elif kind == "epoch" and not epoch_seen:
                self.last_epoch, epoch_seen = lines[i], True
            elif kind == "eval" and not eval_seen:
                self.last_eval, eval_seen = lines[i], True
            if len(steps) >= keep and (epoch_seen or "epoch" not in present) \
                    and (eval_seen or "eval" not in present):
                break
        for line in reversed(steps):
            self._take_step(line)

    def _take_step(self, line: Mapping[str, Any]) -> None:
        self.last_step = line  # lines are fresh dicts from the reader; no copy
        loss = _num(line.get("loss"))
        self.losses.append(math.nan if loss is None else loss)
        step = _num(line.get("step"))
        t = _num(line.get("time"))
        if step is not None and t is not None:  # no timestamps (CSV logs): no rate
            self._rate.append((t, step))

    @property
    def rate(self) -> float | None:
        """Steps per second over the recent window, from the lines' own timestamps.

        Not from when the lines were read: replaying a finished run would report the
        reader's speed, not the run's.
        """
        if len(self._rate) < 2:
            return None
        (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    @property
    def step(self) -> int | None:
        line = self.last_step or self.last_epoch or self.last_eval
        return None if line is None else step_of(line.get("step"))

    @property
    def epoch(self) -> int | None:
        line = self.last_step or self.last_epoch or self.last_eval
        return None if line is None else step_of(line.get("epoch"))

    def last(self) -> dict:
        """The compact summary of the latest values, as the JSON verdict's `last`: each
        field read as a record reads it (`reading.fields`)."""
        s = self.last_step or {}
        out = {"step": self.step, "epoch": self.epoch, "time": number(s.get("time")),
               "loss": number(s.get("loss")), "terms": mapping(s.get("terms")),
               "weights": mapping(s.get("weights")), "shares": term_shares(s) if s else {},
               "lr": numbers(s.get("lr")), "grad_norm": mapping(s.get("grad_norm")),
               "steps_per_s": self.rate, "lines": self.lines, "bad_lines": self.bad_lines}
        if self.last_eval is not None:
            out["val_loss"] = number(self.last_eval.get("loss"))
            out["val_metrics"] = mapping(self.last_eval.get("metrics"))
        return out

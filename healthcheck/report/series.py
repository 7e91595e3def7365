"""A run's metrics as columns for plotting, in memory that does not grow with the run.

A plot is a few hundred pixels wide, so a million step lines carry no more picture than
a couple of thousand. `Series` keeps every k-th step line and doubles k (dropping every
other kept point) whenever it holds `2 * max_points`; epoch and eval lines are rarer and
kept the same way. Steps whose loss is not finite are kept (up to a quarter of the
budget): a NaN is the one point a plot must not lose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..watch.reading.fields import kind_of, mapping, nan_if_none, numbers
from ..watch.state import term_shares

NAN = math.nan


def _f(x: Any) -> float:
    return NAN if isinstance(x, bool) else nan_if_none(x)


@dataclass
class PlotColumns:
    """Aligned columns: `x` (step) and named value columns, NaN where a line lacked one."""

    x: list[float] = field(default_factory=list)
    cols: dict[str, list[float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def append(self, x: float, values: Mapping[str, float]) -> None:
        n = len(self.x)
        self.x.append(x)
        for name, v in values.items():
            col = self.cols.get(name)
            if col is None:
                col = self.cols[name] = [NAN] * n
            col.append(v)
        for col in self.cols.values():
            if len(col) == n:
                col.append(NAN)

    def thin(self, keep: list[int]) -> None:
        self.x = [self.x[i] for i in keep]
        self.cols = {k: [c[i] for i in keep] for k, c in self.cols.items()}

    def group(self, prefix: str) -> dict[str, list[float]]:
        """The columns named `prefix` + name, keyed by name."""
        return {k[len(prefix):]: c for k, c in self.cols.items() if k.startswith(prefix)}


class _Decimated:
    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self.stride = 1
        self.seen = 0
        self.data = PlotColumns()
        self._pinned: set[int] = set()  # indices (into data) that thinning must keep

    def add(self, x: float, values: Mapping[str, float], pin: bool = False) -> None:
        self.seen += 1
        pin = pin and len(self._pinned) < self.max_points // 4  # a run of NaNs must stay bounded
        if not pin and (self.seen - 1) % self.stride:
            return
        if pin:
            self._pinned.add(len(self.data))
        self.data.append(x, values)
        if len(self.data) >= 2 * self.max_points:
            keep = [i for i in range(len(self.data)) if i % 2 == 0 or i in self._pinned]
            self._pinned = {j for j, i in enumerate(keep) if i in self._pinned}
            self.data.thin(keep)
            self.stride *= 2


class Series:
    """Step, epoch and eval columns of one run, thinned to about `max_points` each.

    Column names: `loss`, `term/<name>`, `share/<name>`, `weight/<name>`, `grad/<module>`,
    `ratio/<module>` (update_norm / param_norm), `lr/<group>`; eval adds `metric/<name>`.
    """

    def __init__(self, max_points: int = 2000) -> None:
        if max_points < 10:
            raise ValueError(f"max_points must be at least 10, but got {max_points=}")
        self._step = _Decimated(max_points)
        self._epoch = _Decimated(max_points)
        self._eval = _Decimated(max_points)
        self.lines = 0

    @property
    def steps(self) -> PlotColumns:
        return self._step.data

    @property
    def epochs(self) -> PlotColumns:
        return self._epoch.data

    @property
    def evals(self) -> PlotColumns:
        return self._eval.data

    def add(self, line: Mapping[str, Any]) -> None:
        self.lines += 1
        kind = kind_of(line.get("kind"))
        x = _f(line.get("step"))
        loss = _f(line.get("loss"))
        values = {"loss": loss}
        for name, v in mapping(line.get("terms")).items():
            values[f"term/{name}"] = _f(v)
        if kind == "eval":
            for name, v in mapping(line.get("metrics")).items():
                values[f"metric/{name}"] = _f(v)
            self._eval.add(x, values, pin=not math.isfinite(loss))
            return
        if kind == "epoch":
            self._epoch.add(x, values, pin=not math.isfinite(loss))
            return
        for name, v in mapping(line.get("weights")).items():
            values[f"weight/{name}"] = _f(v)
        for name, v in term_shares(line).items():
            values[f"share/{name}"] = v
        for name, v in mapping(line.get("grad_norm")).items():
            values[f"grad/{name}"] = _f(v)
        upd, par = mapping(line.get("update_norm")), mapping(line.get("param_norm"))
        for name, u in upd.items():
            p = _f(par.get(name))
            values[f"ratio/{name}"] = _f(u) / p if p and math.isfinite(p) else NAN
        for i, v in enumerate(numbers(line.get("lr"))):
            values[f"lr/{i}"] = _f(v)
        self._step.add(x, values, pin=not math.isfinite(loss))

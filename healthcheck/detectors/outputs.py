"""Checks on what the model outputs, from numbers the training loop reports in ``metrics``.

The harness cannot know a model's outputs, so these checks read conventional keys of
``record.metrics`` that a loop may add; without them they stay silent:

* ``pred_top_share``: share of predictions that fall in the most frequent class (0..1).
* ``<name>_at_bound``: share of output ``<name>`` sitting at a clamp bound (0..1).

`ChanceLevel` needs the number of classes and `ExpectedRange` a declared range, so both
are opt-in (not in the defaults).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..blocks.columns import KIND_NAMES
from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, BlockEvents, Detector, Streaks, check_float, check_int, finite

if TYPE_CHECKING:  # pragma: no cover
    from ..blocks.columns import MetricBlock


class ChanceLevel(Detector):
    """A classification loss at or above its chance level ln(K) for ``patience`` epoch or
    eval records (``loss.chance_level``).

    Cross-entropy of a uniform guess over K classes is ln K (TheDeepChecker's and
    Karpathy's "loss at init" check); staying there for epochs means the head learns
    nothing (docs/failure-catalogue.md row 10). ``term`` names the loss term to judge (default: the total).
    Within relative ``rtol`` (5 %) below ln K counts as "at chance".
    """

    codes = (Code("loss.chance_level", Severity.WARNING,
                  meaning="A classification loss sits at its chance level ln(K) epoch after epoch.",
                  fix="The head learns nothing from the features: check labels line up with "
                      "inputs, that the backbone is trainable, and that the learning rate is not "
                      "tiny."),)
    phases = frozenset({"epoch", "eval"})

    def __init__(self, num_classes: int, term: str | None = None, rtol: float = 0.05,
                 patience: int = 3) -> None:
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.term = term
        self.rtol = check_float("rtol", rtol, lo=0.0, hi=1.0)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> Streaks:
        return Streaks()

    def check(self, record: StepRecord, state: Streaks, live: LiveView | None) -> Sequence[HealthEvent]:
        value = record.loss if self.term is None else record.terms.get(self.term)
        if not finite(value):
            return NO_EVENTS
        chance = math.log(self.num_classes)
        where = ("val" if record.kind == "eval" else "train") + (f"/{self.term}" if self.term else "")
        n = state.bump(where, value >= (1.0 - self.rtol) * chance)
        if n < self.patience:
            return NO_EVENTS
        return (self.event(
            "loss.chance_level", record, where=where,
            title=f"loss {value:.4g} at chance level ln({self.num_classes}) = {chance:.4g}",
            detail=(f"The {where} loss has been at or above {1 - self.rtol:.0%} of ln(K) = {chance:.4g} "
                    f"for {n} consecutive {record.kind} records."),
            evidence={"loss": value, "chance": chance, "records": n}),)


class CollapsedPredictions(Detector):
    """The most frequent predicted class takes more than ``max_share`` of predictions for
    ``patience`` records (``output.collapsed``). Reads ``metrics[key]``.

    0.95 by default: beyond any class imbalance a dataset with this check on would
    usually have (set it above the majority class's share otherwise).
    """

    codes = (Code("output.collapsed", Severity.WARNING,
                  meaning="Predictions collapsed onto one class (share of the most frequent "
                          "prediction).",
                  fix="The head predicts the majority class only: check class balance, the loss "
                      "weighting and whether the features carry information."),)
    phases = frozenset({"epoch", "eval"})

    def __init__(self, key: str = "pred_top_share", max_share: float = 0.95, patience: int = 3) -> None:
        self.key = key
        self.max_share = check_float("max_share", max_share, lo=0.0, hi=1.0)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> Streaks:
        return Streaks()

    def check(self, record: StepRecord, state: Streaks, live: LiveView | None) -> Sequence[HealthEvent]:
        share = record.metrics.get(self.key)
        if not finite(share):
            return NO_EVENTS
        n = state.bump(record.kind, share > self.max_share)
        if n < self.patience:
            return NO_EVENTS
        return (self._event(record, share, n),)

    def _event(self, record: StepRecord, share: float, n: int) -> HealthEvent:
        return self.event(
            "output.collapsed", record, where=self.key,
            title=f"{share:.0%} of predictions fall in one class",
            detail=(f"metrics[{self.key!r}] = {share!r} > {self.max_share:g} for {n} consecutive "
                    f"{record.kind} records: the predictions collapsed onto one class."),
            evidence={"share": share, "records": n})

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def check_block(self, block: MetricBlock, rows: np.ndarray, state: Streaks) -> BlockEvents | None:
        """`check` on the share's column: nothing to do where no line reports it, and a
        record only for a row that fires."""
        _, metrics = block.mapping("metrics")  # built first: building it marks odd rows
        if block.irregular[rows].any():
            return None
        shares = metrics.get(self.key)
        if shares is None:
            return []  # no line has the share: every row leaves the streaks alone
        out = []
        kinds = block.kind[rows].tolist()
        for row, kind, share in zip(rows.tolist(), kinds, shares[rows].tolist()):
            if not math.isfinite(share):
                continue
            n = state.bump(KIND_NAMES.get(kind, "step"), share > self.max_share)
            if n >= self.patience:
                out.append((row, self._event(block.record(row), share, n)))
        return out


class SaturatedOutputs(Detector):
    """More than ``max_fraction`` of an output sits at a clamp bound for ``patience``
    records (``output.saturated``). Reads every ``metrics`` key ending in ``suffix``.

    A clamped output has zero gradient at its bound, so a fifth of outputs there is a fifth
    of the head not learning (catalogue row 12 had 28 %). Where the model does not report
    the share, the head's gradient norm (``grad.vanishing`` / ``grad.zero``) is the signal.
    """

    codes = (Code("output.saturated", Severity.WARNING,
                  meaning="A large share of an output sits at a clamp bound, where its gradient is "
                          "0.",
                  fix="Widen the clamp, use a smooth bound (sigmoid/softplus scaling) or rescale "
                      "the target."),)
    phases = frozenset({"after_step", "eval"})
    memory = 1

    def __init__(self, suffix: str = "_at_bound", max_fraction: float = 0.2, patience: int = 3) -> None:
        if not suffix:
            raise ValueError(f"suffix must be a non-empty string, but got {suffix=}")
        self.suffix = suffix
        self.max_fraction = check_float("max_fraction", max_fraction, lo=0.0, hi=1.0)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> Streaks:
        return Streaks()

    def check(self, record: StepRecord, state: Streaks, live: LiveView | None) -> Sequence[HealthEvent]:
        if not record.metrics:
            return NO_EVENTS
        out = []
        for key, share in record.metrics.items():
            if not key.endswith(self.suffix) or not finite(share):
                continue
            name = key[: -len(self.suffix)] or key
            n = state.bump(f"{record.kind}:{name}", share > self.max_fraction)
            if n >= self.patience:
                out.append(self.event(
                    "output.saturated", record, where=name,
                    title=f"{share:.0%} of output {name!r} is at a clamp bound",
                    detail=(f"metrics[{key!r}] = {share!r} > {self.max_fraction:g} for {n} consecutive "
                            f"{record.kind} records; those outputs get no gradient."),
                    evidence={"share": share, "records": n}))
        return out or NO_EVENTS

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def screen(self, block: MetricBlock) -> np.ndarray | None:
        names, metrics = block.mapping("metrics")
        out = np.zeros(block.n, dtype=bool)
        for key in names:
            if key.endswith(self.suffix):
                share = metrics[key]
                out |= ~np.isfinite(share) | (share > self.max_fraction)
        return out


@dataclass
class _RangeState:
    steps: int = 0


class ExpectedRange(Detector):
    """A named value leaves its declared range [``low``, ``high``] (``value.out_of_range``).

    ``key`` is "loss", a loss term, or a ``metrics`` key (e.g. a ratio of the norms of the
    two matrices a loss compares, which catalogue row 6 had at 1e-4 vs 46). With
    ``first_steps`` only the first n step records are judged: an NMSE whose first value is
    1e25 instead of ~1 is a scale bug found before any training happened. No patience:
    the range is the user's own statement of what is possible.
    """

    codes = (Code("value.out_of_range", Severity.ERROR,
                  meaning="A loss, loss term or reported metric left the range it was declared to "
                          "stay in.",
                  fix="A scale mismatch between the compared quantities (e.g. one covariance not "
                      "trace-normalised) or a unit error; print both sides of the comparison at "
                      "step 0."),)
    phases = frozenset({"after_backward", "eval"})

    def __init__(self, key: str, low: float | None = None, high: float | None = None, *,
                 first_steps: int | None = None) -> None:
        if not key:
            raise ValueError(f"key must name the loss, a term or a metric, but got {key=}")
        if low is None and high is None:
            raise ValueError(f"give low, high or both, but got {low=} and {high=}")
        self.key = key
        self.low = -math.inf if low is None else check_float("low", low)
        self.high = math.inf if high is None else check_float("high", high)
        if self.low > self.high:
            raise ValueError(f"low must not exceed high, but got {low=} and {high=}")
        self.first_steps = None if first_steps is None else check_int("first_steps", first_steps, 1)

    def new_state(self) -> _RangeState:
        return _RangeState()

    def check(self, record: StepRecord, state: _RangeState, live: LiveView | None) -> Sequence[HealthEvent]:
        if record.kind == "step":
            state.steps += 1
            if self.first_steps is not None and state.steps > self.first_steps:
                return NO_EVENTS
        elif self.first_steps is not None:
            return NO_EVENTS
        if self.key == "loss":
            value = record.loss
        else:
            value = record.terms.get(self.key, record.metrics.get(self.key))
        if value is None or math.isnan(value) or self.low <= value <= self.high:
            return NO_EVENTS
        where = ("val/" if record.kind == "eval" else "") + self.key
        return (self.event(
            "value.out_of_range", record, where=where,
            title=f"{where} = {value:.4g}, outside [{self.low:g}, {self.high:g}]",
            detail=(f"{where} is {value!r} at step {record.step}; it was declared to stay within "
                    f"[{self.low:g}, {self.high:g}]."),
            evidence={"value": value, "low": self.low, "high": self.high}),)

"""Checks on the validation loss across evaluations.

A validation loss identical to six decimals across epochs (docs/failure-catalogue.md row 3) says the model
did not change between evaluations; one that stops improving early (row 7) says the loss
or the optimisation cannot get lower. Both only show across evaluations, so these checks
run on ``eval`` records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..blocks.columns import KIND_NAMES
from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, BlockEvents, Detector, check_float, check_int, fmt

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..blocks.columns import MetricBlock


class _LossOnlyDetector(Detector):
    """A detector that reads nothing but each eval record's loss.

    A subclass says, in ``_fires``, how one loss advances its state and whether that
    evaluation reports, and in ``_event`` what it reports; checking a record and checking
    a block's loss column are then the same for all of them.
    """

    def check(self, record: StepRecord, state: Any, live: LiveView | None) -> Sequence[HealthEvent]:
        loss = record.loss
        if loss is None or not self._fires(state, loss):
            return NO_EVENTS
        return (self._event(record, state, loss),)

    def _fires(self, state: Any, loss: float) -> bool:
        raise NotImplementedError

    def _event(self, record: StepRecord, state: Any, loss: float) -> HealthEvent:
        raise NotImplementedError

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def check_block(self, block: MetricBlock, rows: np.ndarray, state: Any) -> BlockEvents | None:
        """`check` on the loss column: a record only for a row that fires. Irregular rows
        (a loss that is not a number) go the record way."""
        losses = block.scalar("loss")[rows]  # built first: building it marks odd rows
        if block.irregular[rows].any():
            return None
        out = []
        for row, loss in zip(rows.tolist(), losses.tolist()):
            if self._fires(state, loss):
                out.append((row, self._event(block.record(row), state, loss)))
        return out


@dataclass
class _RepeatState:
    ref: float = math.nan
    count: int = 0


class ValConstant(_LossOnlyDetector):
    """The validation loss is unchanged (relative ``rtol``) for ``patience`` evaluations
    (``val.constant``, error).

    The validation set is fixed, so any change of the weights changes the loss in its low
    digits; three identical values in a row (SageMaker Debugger's UnchangedTensor also
    looks at 3 steps) mean the weights did not change. rtol=1e-7 ~ one float32 ulp.
    """

    codes = (Code("val.constant", Severity.ERROR,
                  meaning="The validation loss is identical (relative 1e-7) across consecutive "
                          "evaluations.",
                  fix="The model does not change between evaluations: steps are not applied, or "
                      "evaluation uses a stale copy of the weights."),)
    phases = frozenset({"eval"})

    def __init__(self, patience: int = 3, rtol: float = 1e-7) -> None:
        self.patience = check_int("patience", patience, 2)
        self.rtol = check_float("rtol", rtol, lo=0.0)

    def new_state(self) -> _RepeatState:
        return _RepeatState()

    def _fires(self, state: _RepeatState, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        if state.count and abs(loss - state.ref) <= self.rtol * abs(state.ref):
            state.count += 1
        else:
            state.ref, state.count = loss, 1
        return state.count >= self.patience

    def _event(self, record: StepRecord, state: _RepeatState, loss: float) -> HealthEvent:
        return self.event(
            "val.constant", record, where="val",
            title=f"validation loss identical ({fmt(loss)}) for {state.count} evaluations",
            detail=(f"The validation loss stayed within rtol={self.rtol:g} of {state.ref!r} for "
                    f"{state.count} consecutive evaluations (epoch {record.epoch})."),
            evidence={"val_loss": loss, "evals": state.count})


@dataclass
class _PlateauState:
    best: float = math.inf
    wait: int = 0
    evals: int = 0


class ValPlateau(_LossOnlyDetector):
    """The validation loss has not improved by ``min_delta`` (relative) for ``patience``
    evaluations (``val.plateau``, warning).

    Like early stopping's patience, but reported instead of acted on: a plateau at the end
    of training is convergence, a plateau from the start is a loss that cannot go lower.
    Relative 1e-3 so improvements in the fourth digit count; 10 evaluations.
    """

    codes = (Code("val.plateau", Severity.WARNING,
                  meaning="The validation loss has not improved for many evaluations.",
                  fix="Expected at convergence; early in training it points at a loss that is not "
                      "0 at the optimum, a too-small learning rate, or a capacity problem."),)
    phases = frozenset({"eval"})

    def __init__(self, patience: int = 10, min_delta: float = 1e-3) -> None:
        self.patience = check_int("patience", patience, 1)
        self.min_delta = check_float("min_delta", min_delta, lo=0.0)

    def new_state(self) -> _PlateauState:
        return _PlateauState()

    def _fires(self, state: _PlateauState, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        state.evals += 1
        if state.best == math.inf or loss < state.best - self.min_delta * abs(state.best):
            state.best, state.wait = loss, 0
            return False
        state.wait += 1
        return state.wait >= self.patience

    def _event(self, record: StepRecord, state: _PlateauState, loss: float) -> HealthEvent:
        return self.event(
            "val.plateau", record, where="val",
            title=f"validation loss has not improved for {state.wait} evaluations (best {fmt(state.best)})",
            detail=(f"Best validation loss {state.best!r}; the last {state.wait} evaluations did not "
                    f"improve on it by a relative {self.min_delta:g} (latest {loss!r})."),
            evidence={"val_loss": loss, "best": state.best, "evals": state.wait})


@dataclass
class _GapState:
    train: float = math.nan  # mean training loss of the latest epoch
    count: int = 0


class ValTrainGap(Detector):
    """The validation loss is more than ``max_ratio`` x the latest epoch's mean training
    loss for ``patience`` evaluations (``val.train_gap``, error).

    Both splits come from one distribution, so an honest model's losses on them are close
    (the detection benchmark's healthy runs: 0.87-1.14). Ten times is a model that learned
    something that does not hold on validation: with every training target replaced by
    one scene's (the benchmark's constant-targets fault) the ratio is 4, 121 and 570 at
    its three evaluations. Two evaluations in a row so a single odd one does not fire. A
    model that memorises a very small training set late in a long run can get there too:
    raise ``max_ratio`` for such runs. Losses <= 0 (log-likelihoods) make the ratio
    meaningless: then silent.
    """

    codes = (Code("val.train_gap", Severity.ERROR,
                  meaning="The validation loss is many times the training loss of the same epoch, "
                          "evaluation after evaluation.",
                  fix="The splits disagree: broken targets or inputs in one of them (constant, "
                      "shuffled, differently normalised), or a model memorising a tiny training "
                      "set; compare samples of both."),)
    phases = frozenset({"epoch", "eval"})

    def __init__(self, max_ratio: float = 10.0, patience: int = 2) -> None:
        self.max_ratio = check_float("max_ratio", max_ratio, lo=1.0, lo_open=True)
        self.patience = check_int("patience", patience, 1)

    def new_state(self) -> _GapState:
        return _GapState()

    def check(self, record: StepRecord, state: _GapState, live: LiveView | None) -> Sequence[HealthEvent]:
        loss = record.loss
        if loss is None or not self._fires(state, record.kind, loss):
            return NO_EVENTS
        return (self._event(record, state, loss),)

    def _fires(self, state: _GapState, kind: str, loss: float) -> bool:
        if kind == "epoch":
            state.train = loss if math.isfinite(loss) else math.nan
            return False
        if kind != "eval" or not math.isfinite(loss):
            return False
        train = state.train
        if not (train > 0 and loss > 0):
            state.count = 0
            return False
        state.count = state.count + 1 if loss / train > self.max_ratio else 0
        return state.count >= self.patience

    def _event(self, record: StepRecord, state: _GapState, loss: float) -> HealthEvent:
        train = state.train
        ratio = loss / train
        return self.event(
            "val.train_gap", record, where="val",
            title=f"validation loss {fmt(loss)} is {ratio:.3g}x the training loss {fmt(train)}",
            detail=(f"The validation loss has been above {self.max_ratio:g}x the epoch's mean training "
                    f"loss for {state.count} evaluations (epoch {record.epoch}: {loss!r} vs {train!r})."),
            evidence={"val_loss": loss, "train_loss": train, "ratio": ratio, "evals": state.count})

    # -- bulk path: judging a file block at once (healthcheck.blocks) --
    def check_block(self, block: MetricBlock, rows: np.ndarray, state: _GapState) -> BlockEvents | None:
        """`check` on the loss and kind columns: a record only for a row that fires."""
        losses = block.scalar("loss")[rows]  # built first: building it marks odd rows
        if block.irregular[rows].any():
            return None
        out = []
        kinds = block.kind[rows].tolist()
        for row, kind, loss in zip(rows.tolist(), kinds, losses.tolist()):
            if self._fires(state, KIND_NAMES.get(kind, "step"), loss):
                out.append((row, self._event(block.record(row), state, loss)))
        return out

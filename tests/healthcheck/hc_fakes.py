"""Fake records and a tiny driver, so detector tests read like the run they simulate."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from healthcheck.detectors import Detector
from healthcheck.record import StepRecord

PHASE_OF_KIND = {"step": ("after_backward", "after_step"), "epoch": ("epoch",), "eval": ("eval",)}


def healthy_step(i: int, **over: Any) -> StepRecord:
    """Step i of a run that learns: loss decays with batch noise, terms and weights sane,
    gradients and updates of plausible size, one step applied per batch."""
    noise = 0.05 * math.sin(1.7 * i)  # deterministic batch-to-batch variation
    mse = 1.0 / (1 + 0.05 * i) + noise
    reg = 0.2 + 0.01 * math.cos(i)
    fields = dict(
        kind="step", step=i, epoch=i // 50, time=1000.0 + i, loss=1.0 * mse + 0.1 * reg,
        terms={"mse": mse, "reg": reg}, weights={"mse": 1.0, "reg": 0.1}, primary="mse",
        lr=[1e-3, 1e-3],
        grad_norm={"encoder": 0.5 + 0.1 * math.sin(i), "head": 0.8 + 0.1 * math.cos(i)},
        update_norm={"encoder": 2e-3 * (1 + 0.1 * math.sin(i)), "head": 1e-3},
        param_norm={"encoder": 3.0, "head": 1.5},
        steps_taken=i + 1, batches_seen=i + 1, skipped=False)
    fields["grad_norm"]["_total"] = math.hypot(*fields["grad_norm"].values())
    fields.update(over)
    return StepRecord(**fields)


def healthy_epoch(e: int, **over: Any) -> StepRecord:
    """The mean training record of epoch e, close to its validation loss (`healthy_eval`)."""
    fields = dict(kind="epoch", step=50 * (e + 1) - 1, epoch=e, loss=0.95 / (1 + 0.3 * e), terms={})
    fields.update(over)
    return StepRecord(**fields)


def healthy_eval(e: int, **over: Any) -> StepRecord:
    fields = dict(kind="eval", step=50 * (e + 1), epoch=e, loss=1.0 / (1 + 0.3 * e), terms={}, metrics={})
    fields.update(over)
    return StepRecord(**fields)


def run(det: Detector, records: Iterable[StepRecord], live: Any = None) -> list:
    """Feed records to one detector as the monitor would (each record at each of its kind's
    phases the detector listens to); return every event it emitted."""
    state = det.new_state()
    out = []
    for rec in records:
        for phase in PHASE_OF_KIND[rec.kind]:
            if phase in det.phases:
                out.extend(det.check(rec, state, live))
    return out


def codes_where(events: Iterable) -> set[tuple[str, str | None]]:
    return {(e.code, e.where) for e in events}

"""Checks on the optimizer's own settings, per param group, before the step uses them.

Some settings break training on their own, whatever the data: a weight decay that, times
the learning rate, erases a large share of the weights every step leaves nothing for the
gradient to build. Records do not carry these settings, so the checks read the live
optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..codes import Code
from ..events import HealthEvent, Severity
from ..live import LiveView
from ..record import StepRecord
from .base import NO_EVENTS, Detector, DetectorState, check_float


class WeightDecay(Detector):
    """A param group's lr x weight_decay is >= ``max_product`` (``optim.weight_decay``).

    Decoupled decay (AdamW) and L2 decay in SGD shrink every weight by a factor
    (1 - lr x wd) per step; at 0.1 a weight the gradient does not hold up halves in 7
    steps, and at 1 it is erased in one. Healthy settings are orders of magnitude lower
    (AdamW's default 1e-2 at lr 1e-3 is 1e-5; the detection benchmark's healthy runs reach
    7e-7). With Adam's coupled L2 decay the product is not a shrink factor, but
    wd x θ then dwarfs the gradient in the normalised update, which is as bad. The lr
    used is the group's highest known rate (its current ``lr``, the scheduler's
    ``initial_lr`` or a one-cycle ``max_lr``), so a warm-up does not hide the peak. No
    patience: it is a setting, not a measurement.
    """

    codes = (Code("optim.weight_decay", Severity.ERROR,
                  meaning="A param group's learning rate x weight decay is so large that every "
                          "step erases a large share of its weights.",
                  fix="Typical lr x weight decay is 1e-8..1e-4: check the value's units (decoupled "
                      "AdamW decay is multiplied by the lr) and where it was set."),)
    phases = frozenset({"after_backward"})
    needs_live = True

    def __init__(self, max_product: float = 0.1) -> None:
        self.max_product = check_float("max_product", max_product, lo=0.0, lo_open=True)

    def check(self, record: StepRecord, state: DetectorState, live: LiveView | None) -> Sequence[HealthEvent]:
        if live is None or live.optimizer is None:
            return NO_EVENTS
        out = []
        for i, group in enumerate(live.optimizer.param_groups):
            wd = _number(group.get("weight_decay"))
            if not wd > 0:
                continue
            lr = max(_number(group.get(k)) for k in ("lr", "initial_lr", "max_lr"))
            product = lr * wd
            if product >= self.max_product:
                out.append(self.event(
                    "optim.weight_decay", record, where=f"group{i}",
                    title=f"param group {i}: lr x weight_decay = {product:.3g}",
                    detail=(f"Param group {i} has weight_decay = {wd!r} and a learning rate up to {lr!r}: "
                            f"each step shrinks its weights by a factor of about {1 - min(product, 1.0):.3g} "
                            f"(threshold lr x wd >= {self.max_product:g})."),
                    evidence={"lr": lr, "weight_decay": wd, "product": product}))
        return out or NO_EVENTS


def _number(value: object) -> float:
    """A float from a param-group entry (a float, a 0-d tensor, None or absent → 0)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return v if v == v else 0.0

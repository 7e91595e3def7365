"""Learning-rate schedule: linear warm-up, then cosine decay, stepped per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(warmup_steps: int, total_steps: int, start: float, floor: float) -> Callable[[int], float]:
    """LR multiplier for step ``s``: ``start`` → 1 over the warm-up, then cosine to ``floor``.

    ``start`` must be > 0: the origin pipeline's warm-up began at exactly 0, and its
    first epoch moved no parameter at all (docs/failure-catalogue.md row 2).
    """
    if not 0 < start <= 1:
        raise ValueError(f"warm-up start factor must be in (0, 1], but got {start=}")
    if not 0 <= floor <= 1:
        raise ValueError(f"cosine floor must be in [0, 1], but got {floor=}")
    warmup_steps = max(0, warmup_steps)
    total_steps = max(total_steps, warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1.0 - start) * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor

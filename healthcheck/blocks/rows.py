"""Which rows of a block a detector must judge one by one, by what its screen says.

Most rows of a long healthy run give a detector nothing to say; its `Detector.screen`
names, from the block's columns, the rows that may. `rows_to_check` adds the rows that
rebuild the state the skipped rows would have left, so judging only those rows emits
what judging all of them would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .columns import MetricBlock

if TYPE_CHECKING:
    from ..detectors import Detector


def rows_to_check(detector: Detector, block: MetricBlock, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``idx`` (ascending) on which ``detector.check`` must run so that it
    emits what it would emit on all of them, and leaves the same state behind; and which
    of them are flagged (their events count; the others only rebuild the state).

    Without a screen: all. With one: the rows it flags (and every irregular row), plus
    the ``memory`` rows before each of them and at the block's end, which rebuild the
    state the skipped rows would have left (the screen's contract, `Detector.screen`).
    """
    memory = detector.memory
    try:
        must = None if memory is None else detector.screen(block)
    except Exception:  # values the screen cannot read (an unhashable primary): ``check`` judges them
        must = None
    if must is None or memory is None:
        return idx, np.ones(idx.size, dtype=bool)
    sel = (must | block.irregular)[idx]
    if memory == 0:
        return idx[sel], np.ones(int(sel.sum()), dtype=bool)
    keep = sel.copy()
    ends = np.append(np.flatnonzero(sel), idx.size)
    for back in range(1, memory + 1):
        before = ends - back
        keep[before[before >= 0]] = True
    return idx[keep], sel[keep]

"""Judging many metrics lines at once: the same verdict as line by line, faster.

`columns.MetricBlock` holds consecutive lines (dicts) as numpy columns; `typed.StructBlock`
does the same for typed rows decoded by `watch.reading.LineLayout`. `rows.rows_to_check`
picks the rows a detector's screen says must be judged, and `judging.judge_block` runs
every detector over a block (what `Monitor.observe_block` does). Names are loaded on first
use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "MetricBlock": "columns",
    "KIND_CODES": "columns",
    "KIND_NAMES": "columns",
    "StructBlock": "typed",
    "LineDicts": "typed",
    "SelectedLines": "typed",
    "rows_to_check": "rows",
    "judge_block": "judging",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .columns import KIND_CODES, KIND_NAMES, MetricBlock
    from .judging import judge_block
    from .rows import rows_to_check
    from .typed import LineDicts, SelectedLines, StructBlock

"""`healthcheck report`: one self-contained HTML page about a run.

`page` collects the run (with the readers and detectors `watch` uses) and writes the
page; `series` keeps the thinned curves; `plots` draws the figures. Names are loaded on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "write_report": "page",
    "collect": "page",
    "FIGURES": "page",
    "RunData": "page",
    "Series": "series",
    "PlotColumns": "series",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .page import FIGURES, RunData, collect, write_report
    from .series import PlotColumns, Series

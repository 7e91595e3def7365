"""`healthcheck report`: one self-contained HTML page about a run.

`page` collects the run (with the readers and detectors `watch` uses) and writes the
page; `series` keeps the thinned curves; `plots` draws the figures. Names are loaded on
first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "write_report": "page",
    "collect": "page",
    "FIGURES": "page",
    "ReportData": "page",
    "Series": "series",
    "PlotColumns": "series",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .page import FIGURES, ReportData, collect, write_report
    from .series import PlotColumns, Series

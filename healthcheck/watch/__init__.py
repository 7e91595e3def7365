"""`healthcheck watch`: judge a run from its files, once or while it runs.

`reading` reads the run's files (metrics.jsonl, Lightning CSV, TensorBoard, health.jsonl)
as they grow; `runwatch.RunWatch` judges what was read with the detectors that need no
live model; `book` folds the events of both sources into one entry per finding; `state`
keeps what the view shows; `view` draws it; `app` is the command. Names are loaded on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "RunWatch": "runwatch",
    "stream_detectors": "runwatch",
    "exit_code": "runwatch",
    "json_safe": "runwatch",
    "numbered_reads": "runwatch",
    "BAD_LINE": "runwatch",
    "END_CODE": "runwatch",
    "EventBook": "book",
    "MAX_EVENTS": "book",
    "RunState": "state",
    "term_shares": "state",
    "WatchOptions": "app",
    "run_watch": "app",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .app import WatchOptions, run_watch
    from .book import MAX_EVENTS, EventBook
    from .runwatch import BAD_LINE, END_CODE, RunWatch, exit_code, json_safe, numbered_reads, stream_detectors
    from .state import RunState, term_shares

"""Readers for the files a training run leaves behind, safe to use while it writes them.

`tail` follows a growing file line by line; `layout` decodes regular metrics lines into
typed rows; `lightning_csv` and `tensorboard` read the other loggers' files as metrics
lines; `keys` maps their column names; `source` finds a run dir's files and their format.
"""

from .keys import KeyMap
from .layout import FieldSpec, LineLayout, LineShape, Segment, StructRows, parse_line
from .lightning_csv import CsvMetricsTail
from .source import (
    FORMATS,
    HEALTH_FILE,
    METRICS_FILE,
    RunLogError,
    check_readable,
    csv_logs,
    detect_format,
    open_health,
    open_metrics,
)
from .tail import BadLine, FileStatus, JsonLinesTail, LineTail, NumberedItems, numbered_batches
from .tensorboard import TensorBoardTail, parse_event

__all__ = [
    "BadLine", "CsvMetricsTail", "FORMATS", "FieldSpec", "FileStatus", "HEALTH_FILE", "JsonLinesTail",
    "KeyMap", "LineLayout", "LineShape", "LineTail", "METRICS_FILE", "NumberedItems", "RunLogError",
    "Segment", "StructRows", "TensorBoardTail", "check_readable", "csv_logs", "detect_format", "numbered_batches",
    "open_health", "open_metrics", "parse_event", "parse_line",
]

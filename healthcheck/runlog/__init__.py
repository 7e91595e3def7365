"""Readers for the files a training run leaves behind, safe to use while it writes them."""

from ._csv import CsvMetricsTail
from ._keys import KeyMap
from ._source import FORMATS, HEALTH_FILE, METRICS_FILE, RunLogError, detect_format, open_health, open_metrics
from ._tail import BadLine, FileStatus, JsonLinesTail, LineTail
from ._tfevents import TensorBoardTail, parse_event

__all__ = [
    "BadLine", "CsvMetricsTail", "FORMATS", "FileStatus", "HEALTH_FILE", "JsonLinesTail",
    "KeyMap", "LineTail", "METRICS_FILE", "RunLogError", "TensorBoardTail", "detect_format",
    "open_health", "open_metrics", "parse_event",
]

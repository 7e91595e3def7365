"""healthcheck: catch silent training failures while they happen.

Detectors judge each step of a training loop (loss and its terms, loss weights,
gradients, parameter updates, learning rates, skipped steps, validation), a policy
decides what each finding deserves (record, warn, stop, prune), and sinks write it down
(health.jsonl, the console, W&B, optuna). The quickest start, in a plain PyTorch loop::

    health = healthcheck.TrainingHealth(model, optimizer, run_dir="runs/x")
    loss.backward(); health.after_backward(loss, terms=terms, weights=weights)
    optimizer.step(); health.after_step()      # if health.should_stop: break

Importing the package is cheap: names are loaded on first use, and torch, wandb and
optuna are imported only by the parts that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

_EXPORTS = {
    "HealthEvent": "events", "Severity": "events", "HealthLogWriter": "events", "read_events": "events",
    "CODES": "codes", "Code": "codes", "CodeInfo": "codes", "codes_table_markdown": "codes",
    "register_code": "codes",
    "StepRecord": "record", "MetricsWriter": "record", "read_records": "record",
    "LiveView": "live", "ModuleNorms": "live", "measure": "live",
    "Detector": "detectors", "default_detectors": "detectors",
    "Policy": "policy", "PolicyError": "policy",
    "Monitor": "monitor", "judge_records": "monitor",
    "JsonlSink": "sinks", "ConsoleSink": "sinks", "WandbSink": "sinks", "OptunaSink": "sinks",
    "TrainingHealth": "integrations.torch_loop", "HealthStop": "integrations.torch_loop",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .codes import CODES, codes_table_markdown, register_code
    from .detectors import Detector, default_detectors
    from .events import HealthEvent, HealthLogWriter, Severity, read_events
    from .integrations.torch_loop import HealthStop, TrainingHealth
    from .live import LiveView, ModuleNorms, measure
    from .monitor import Monitor, judge_records
    from .policy import Policy, PolicyError
    from .record import MetricsWriter, StepRecord, read_records
    from .sinks import ConsoleSink, JsonlSink, OptunaSink, WandbSink

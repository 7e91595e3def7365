"""How well sources are found: Hungarian-matched metrics, paired-bootstrap leads, and the
evaluation of a trained run next to the classical baselines.

``metrics`` matches estimates to the truth and scores them (RMSE, F1), ``bootstrap`` turns
per-scene totals into leads with confidence intervals, and ``evaluate`` builds the
``ris-model eval`` table. Names load on first use: the table needs the network and the
snapshot fit, the metrics need neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Matching": "metrics", "evaluate_estimates": "metrics", "localization_metrics": "metrics",
    "match_sources": "metrics",
    "LEAD_KEYS": "bootstrap", "SceneTotals": "bootstrap", "paired_lead": "bootstrap",
    "evaluate_run": "evaluate", "load_trained": "evaluate", "with_eval_settings": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ris_model.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .bootstrap import LEAD_KEYS, SceneTotals, paired_lead
    from .evaluate import evaluate_run, load_trained, with_eval_settings
    from .metrics import Matching, evaluate_estimates, localization_metrics, match_sources

"""How well sources are found: Hungarian-matched metrics, paired-bootstrap leads, and the
evaluation of a trained run next to the classical baselines.

``metrics`` matches estimates to the truth and scores them (RMSE, F1), ``bootstrap`` turns
per-scene totals into leads with confidence intervals, and ``evaluate`` builds the
``ris-model eval`` table. Names load on first use: the table needs the network and the
snapshot fit, the metrics need neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "Matching": "metrics", "evaluate_estimates": "metrics", "localization_metrics": "metrics",
    "match_sources": "metrics",
    "LEAD_KEYS": "bootstrap", "SceneTotals": "bootstrap", "paired_lead": "bootstrap",
    "evaluate_run": "evaluate", "load_trained": "evaluate", "with_eval_settings": "evaluate",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .bootstrap import LEAD_KEYS, SceneTotals, paired_lead
    from .evaluate import evaluate_run, load_trained, with_eval_settings
    from .metrics import Matching, evaluate_estimates, localization_metrics, match_sources

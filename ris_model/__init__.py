"""ris_model: RIS-assisted multi-source localisation with a learned covariance.

The packages: ``physics`` (geometry, channel, ``simulate``, CRB), ``estimators`` (R_bp,
R_ls, MUSIC / MVDR, the snapshot fit), ``evaluation`` (metrics, bootstrap leads, the eval
table), ``training`` (the Trainer and its callbacks); ``config``, ``data``, ``model``,
``loss``, ``hpo`` and ``cli`` are modules. The names most scripts need are re-exported
here and load on first use, so ``import ris_model`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

_EXPORTS = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "Trainer": "training.train", "FitResult": "training.train",
    "Callback": "training.callbacks", "CpuBudget": "training.budget",
    "Stop": "training.stop", "StopReason": "training.stop",
    "evaluate_run": "evaluation.evaluate",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .config import Config, ConfigError, load_config
    from .evaluation.evaluate import evaluate_run
    from .training.budget import CpuBudget
    from .training.callbacks import Callback
    from .training.stop import Stop, StopReason
    from .training.train import FitResult, Trainer

"""ris_model: RIS-assisted multi-source localisation with a learned covariance.

The packages: ``physics`` (geometry, channel, ``simulate``, CRB), ``estimators`` (R_bp,
R_ls, MUSIC / MVDR, the snapshot fit), ``evaluation`` (metrics, bootstrap leads, the eval
table), ``training`` (the Trainer and its callbacks); ``config``, ``data``, ``model``,
``loss``, ``hpo`` and ``cli`` are modules. The names most scripts need are re-exported
here and load on first use, so ``import ris_model`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Config": "config", "ConfigError": "config", "load_config": "config",
    "Trainer": "training.train", "FitResult": "training.train",
    "Callback": "training.callbacks", "CpuBudget": "training.budget",
    "Stop": "training.stop", "StopReason": "training.stop",
    "evaluate_run": "evaluation.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ris_model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .config import Config, ConfigError, load_config
    from .evaluation.evaluate import evaluate_run
    from .training.budget import CpuBudget
    from .training.callbacks import Callback
    from .training.stop import Stop, StopReason
    from .training.train import FitResult, Trainer

"""Fitting the covariance network: the Trainer and what only it uses.

``train`` holds the Trainer (the loop, checkpoints, resume); ``callbacks`` the hook
interface that everything watching a run implements, with ``budget`` (CpuBudget),
``progress`` (the terminal bar), ``wandb_logger`` (W&B) and ``plugins`` (callbacks other
packages register) as callbacks; ``stop`` says why a fit ended early. ``rundir`` writes
the run directory, ``measure`` the per-module norms of every step, ``schedule`` the
learning rate, ``weights`` the loss-weight plan, ``distributed`` the DDP context and
``run`` the ``ris-model train`` command. Names load on first use, so importing a light
module (callbacks, weights) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "Trainer": "train", "FitResult": "train", "TrainerState": "train", "build_optimizer": "train",
    "resolve_device": "train",
    "Callback": "callbacks", "CallbackList": "callbacks", "Metrics": "callbacks",
    "Stop": "stop", "StopReason": "stop",
    "CpuBudget": "budget", "ProgressCallback": "progress", "WandbLogger": "wandb_logger",
    "plugin_callbacks": "plugins",
    "RunDir": "rundir", "MetricsFile": "rundir", "load_checkpoint": "rundir",
    "ModuleNormMeter": "measure", "warmup_cosine": "schedule",
    "WeightPlan": "weights", "WeightChange": "weights", "DistContext": "distributed",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .budget import CpuBudget
    from .callbacks import Callback, CallbackList, Metrics
    from .distributed import DistContext
    from .measure import ModuleNormMeter
    from .plugins import plugin_callbacks
    from .progress import ProgressCallback
    from .rundir import MetricsFile, RunDir, load_checkpoint
    from .schedule import warmup_cosine
    from .stop import Stop, StopReason
    from .train import FitResult, Trainer, TrainerState, build_optimizer, resolve_device
    from .wandb_logger import WandbLogger
    from .weights import WeightChange, WeightPlan

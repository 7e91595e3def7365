"""The ris_model subject: the one place where `healthcheck` reaches `ris_model`.

``trainer_callback`` watches the ris_model Trainer, ``gate_subject`` runs the preflight gate
on a ris_model config, ``faults`` injects the failures of docs/failure-catalogue.md into a Trainer,
``overfit`` builds monitored overfit runs, and ``detection`` measures how well the detectors
catch those faults. The rest of `healthcheck` imports these modules lazily, so importing
`healthcheck` never imports `ris_model` (or torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "RisTrainerHealth": "trainer_callback", "callback_factory": "trainer_callback",
    "RisGateSubject": "gate_subject", "GateUsageError": "gate_subject", "run_ris_gate": "gate_subject",
    "gate_entry": "gate_subject",
    "REGISTRY": "faults",
    "OverfitRun": "overfit", "OverfitSpec": "overfit", "build_overfit_run": "overfit",
    "run_benchmark": "detection",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .detection import run_benchmark
    from .faults import REGISTRY
    from .gate_subject import GateUsageError, RisGateSubject, gate_entry, run_ris_gate
    from .overfit import OverfitRun, OverfitSpec, build_overfit_run
    from .trainer_callback import RisTrainerHealth, callback_factory

"""Plain-PyTorch training subjects: real loops, small enough to train on a CPU in seconds.

Each module is one subject (``charlm``, ``imgcls``, ``autoencoder``) with ``NAME``,
``build(seed, variant, steps) -> Setup`` and ``FAULTS``; `loop.train` runs any of them
under a `TrainingHealth`. The detection benchmark (``benchmarks/detection.py --subject``)
trains each subject's healthy variants and faults; tests build them directly.
"""

from __future__ import annotations

from types import ModuleType

from . import autoencoder, charlm, imgcls
from .loop import VARIANTS, Setup, train

SUBJECTS: dict[str, ModuleType] = {m.NAME: m for m in (charlm, imgcls, autoencoder)}

__all__ = ["SUBJECTS", "Setup", "VARIANTS", "train"]

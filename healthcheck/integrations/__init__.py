"""Adapters that feed a training loop's steps to a `Monitor`.

``torch_loop.TrainingHealth`` for hand-written loops; ``lightning.HealthCallback`` for
Lightning and ``huggingface.HealthCallback`` for the Hugging Face ``Trainer`` (each
imports its framework only when used).
"""

from .torch_loop import HealthStop, TrainingHealth

__all__ = ["HealthStop", "TrainingHealth"]

"""Why a fit ended before its last epoch: a reason to branch on and a sentence to read.

A callback that stops the run names both (``trainer.request_stop(message, StopReason.BUDGET)``):
code compares the reason, people read the message, which names the measurement that
decided it ("838 s of 840 s used, and the last epoch took 6 s").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StopReason(enum.Enum):
    """What asked the Trainer to stop; the value is what run files record."""

    BUDGET = "budget"            # CpuBudget: another epoch would pass the CPU budget
    INTERRUPTED = "interrupted"  # SIGINT, SIGTERM or KeyboardInterrupt; the run can be resumed
    PRUNED = "pruned"            # the HPO pruner gave up on the trial
    HEALTH = "health"            # the health monitor's policy
    REQUESTED = "requested"      # any other callback, or another rank's stop
    WRITE_FAILED = "write_failed"  # the run dir stopped taking writes (a full disk)


@dataclass(frozen=True)
class Stop:
    """A stop request: its reason and the sentence that explains it."""

    reason: StopReason
    message: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


__all__ = ["Stop", "StopReason"]

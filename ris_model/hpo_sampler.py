"""The HPO sampler: TPE whose random stream restarts at each trial from (base seed, trial number).

One ``TPESampler(seed=s)`` per worker replays the same stream in every worker started
with ``s`` and in every restart of a worker: concurrent workers drew the same startup
points, and a restarted worker repeated the trials of its first life. The storage hands
out each trial number once per study, so seeding from it gives every trial its own stream,
whichever worker runs it, while a one-worker study stays reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from optuna.samplers import BaseSampler, TPESampler


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` in a study with base ``seed`` (either of any size)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1, dtype=np.uint32)[0])


class TrialSeededSampler(BaseSampler):
    """TPE reseeded per trial (see the module docstring).

    The constant liar makes TPE treat the trials still running in other workers as bad
    ones, so concurrent workers spread out instead of crowding around the same optimum.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._tpe = self._tpe_for(0)

    def _tpe_for(self, number: int) -> TPESampler:
        return TPESampler(seed=trial_seed(self.seed, number), constant_liar=True)

    def before_trial(self, study: Any, trial: Any) -> None:
        self._tpe = self._tpe_for(trial.number)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()

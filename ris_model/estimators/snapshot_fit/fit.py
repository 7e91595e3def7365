"""Sources from a covariance's MUSIC peaks, fitted to the snapshots they came from.

The evaluation's refined rows (``eval.refine = ml``) in one call: the local
maximum-likelihood fit (:mod:`.likelihood`), its global moves (:mod:`.relocate`), and MUSIC
on the fitted covariance, so that every row of an evaluation stays "MUSIC on a covariance".
"""

from __future__ import annotations

from ris_model.config import SystemConfig
from ris_model.estimators.search import Estimates, localize
from ris_model.estimators.snapshot_fit.likelihood import fitted_covariance, refine_sources
from ris_model.estimators.snapshot_fit.relocate import relocate_sources
from ris_model.physics.simulate import SceneBatch


def fit_and_localize(coarse: Estimates, scenes: SceneBatch, system: SystemConfig, *, steps: int = 150,
                     radius_deg: float = 10.0, moves: int = 2) -> Estimates:
    """The ML fit of estimates already made (local, then ``moves`` rounds of global moves),
    then MUSIC (same K) on the fitted covariance.

    The last MUSIC returns the fitted sources themselves (MUSIC on an exact A diag(p) A^H is
    exact, and the fit stays in the search box).
    """
    fit = refine_sources(coarse, scenes, system, steps=steps, radius_deg=radius_deg)
    if moves:
        fit = relocate_sources(fit, scenes, system, rounds=moves, steps=steps, radius_deg=radius_deg)
    return localize(fitted_covariance(fit, system), system, coarse.k, method="music")


__all__ = ["fit_and_localize"]

"""Paired bootstrap over scenes: is one estimator's lead over another more than sampling noise?

Two estimators run on the same scenes make paired errors, and RMSE over a few hundred
scenes is dominated by a handful of gross errors, so two trainings of the same model can
swap places on it. Resampling whole scenes (a scene's sources share its snapshots, so their
errors are not independent) with the same draw for both estimators gives an interval for
the lead itself, which is what a claim such as "beats MUSIC on R_ls" needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ris_model.evaluation.metrics import Matching

LEAD_KEYS = ("rmse_phi_deg", "rmse_theta_deg", "within_1deg")


@dataclass(frozen=True)
class SceneTotals:
    """Per scene: summed squared φ and θ errors (degrees²) of the matched sources, sources
    within 1°, true sources (an unmatched source counts as a miss) and matched sources
    (fewer than the true ones when K is estimated too low)."""

    sq_phi: np.ndarray
    sq_theta: np.ndarray
    within: np.ndarray
    sources: np.ndarray
    matched: np.ndarray

    @classmethod
    def of(cls, matching: Matching, mask: torch.Tensor) -> SceneTotals:
        n = mask.shape[0]
        deg = 180.0 / math.pi

        def per_scene(values: np.ndarray) -> np.ndarray:
            out = np.zeros(n)
            np.add.at(out, matching.scene, values)
            return out

        return cls(sq_phi=per_scene(np.square(matching.phi_err * deg)),
                   sq_theta=per_scene(np.square(matching.theta_err * deg)),
                   within=per_scene((matching.angle <= math.radians(1.0)).astype(float)),
                   sources=mask.detach().cpu().sum(-1).double().numpy(),
                   matched=per_scene(np.ones(matching.scene.shape)))

    def pooled(self, draws: np.ndarray) -> np.ndarray:
        """(RMSE φ, RMSE θ, within-1° share) pooled over the scenes of each row of ``draws``
        (R, B) of scene indices: (R, 3)."""
        matched = np.maximum(self.matched[draws].sum(-1), 1.0)
        sources = np.maximum(self.sources[draws].sum(-1), 1.0)
        return np.stack([np.sqrt(self.sq_phi[draws].sum(-1) / matched),
                         np.sqrt(self.sq_theta[draws].sum(-1) / matched),
                         self.within[draws].sum(-1) / sources], axis=-1)


def paired_lead(a: SceneTotals, b: SceneTotals, *, resamples: int = 2000, level: float = 0.95,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """How far ``a`` leads ``b``, with a ``level`` interval, per metric of :data:`LEAD_KEYS`:
    b's RMSE minus a's, and a's within-1° share minus b's, so a positive lead is a's.

    The RMSE pools the matched sources and the share divides by the true sources, as the
    reports do, so the lead over every scene is the difference of the reported rows.
    """
    if len(a.sources) != len(b.sources) or not np.array_equal(a.sources, b.sources):
        raise ValueError("a paired bootstrap needs both estimators' totals on the same scenes")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1 but got {resamples=}, {level=}")
    everything = np.arange(len(a.sources))[None]
    sign = np.array([-1.0, -1.0, 1.0])  # RMSE: lower is better; share: higher is better
    lead = sign * (a.pooled(everything)[0] - b.pooled(everything)[0])
    draws = np.random.default_rng(seed).integers(0, len(a.sources), size=(resamples, len(a.sources)))
    leads = sign * (a.pooled(draws) - b.pooled(draws))
    lo, hi = np.quantile(leads, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {key: {"lead": float(lead[i]), "low": float(lo[i]), "high": float(hi[i])}
            for i, key in enumerate(LEAD_KEYS)}


__all__ = ["LEAD_KEYS", "SceneTotals", "paired_lead"]

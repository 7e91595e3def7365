"""Localisation metrics: match estimates to sources, then pool errors over the batch.

Estimates carry no identity, so each scene's estimates are first assigned to its true
sources by the Hungarian algorithm on the great-circle angle between directions (the
assignment minimising the summed angle); the result does not depend on the order of
either list. Errors are then pooled over all matched pairs of all scenes: one RMSE per
quantity, not a mean of per-scene RMSEs, so a scene with more sources weighs more.

Angles come in radians; the reported metrics are in degrees (names end in ``_deg``)
and metres (``_m``). Range and position metrics are None for far-field estimates
(infinite range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ris_model.physics.geometry import angular_distance, unit_direction


@dataclass(frozen=True)
class Matching:
    """Matched (estimate, truth) pairs of a batch, flattened over scenes.

    Every array is (P,) for the P matched pairs, except the counts, which are totals.
    ``r_*`` and position error are NaN where a range is infinite.
    """

    scene: np.ndarray  # int: scene of the pair
    est_index: np.ndarray  # int: slot of the estimate in its scene
    true_index: np.ndarray  # int: slot of the source in its scene
    phi_err: np.ndarray  # radians, estimate - truth
    theta_err: np.ndarray  # radians
    r_err: np.ndarray  # metres
    angle: np.ndarray  # radians, great-circle distance
    position_err: np.ndarray  # metres, ||p_hat - p||
    n_estimates: int
    n_sources: int


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy() if t.dtype != torch.bool else t.detach().cpu().numpy()


def match_sources(est_phi: torch.Tensor, est_theta: torch.Tensor, est_r: torch.Tensor, est_mask: torch.Tensor,
                  phi: torch.Tensor, theta: torch.Tensor, r: torch.Tensor, mask: torch.Tensor) -> Matching:
    """Hungarian matching per scene on the angle between estimated and true directions.

    Estimates (B, K_est) and sources (B, K_true) with their masks; K_est and K_true may
    differ (rectangular assignment: min(k_est, k_true) pairs per scene).
    """
    if est_phi.shape[0] != phi.shape[0]:
        raise ValueError(f"estimates and truths must have the same batch size but got "
                         f"{tuple(est_phi.shape)=} and {tuple(phi.shape)=}")
    dist = _as_numpy(angular_distance(  # (B, K_est, K_true)
        est_phi.detach().double().unsqueeze(-1), est_theta.detach().double().unsqueeze(-1),
        phi.detach().double().unsqueeze(-2), theta.detach().double().unsqueeze(-2)))
    e_phi, e_theta, e_r, e_mask = map(_as_numpy, (est_phi, est_theta, est_r, est_mask))
    t_phi, t_theta, t_r, t_mask = map(_as_numpy, (phi, theta, r, mask))
    scenes, rows, cols = [], [], []
    for b in range(dist.shape[0]):
        ei, ti = np.flatnonzero(e_mask[b]), np.flatnonzero(t_mask[b])
        if ei.size == 0 or ti.size == 0:
            continue
        ri, ci = linear_sum_assignment(dist[b][np.ix_(ei, ti)])
        scenes.append(np.full(ri.size, b))
        rows.append(ei[ri])
        cols.append(ti[ci])
    scene = np.concatenate(scenes) if scenes else np.zeros(0, dtype=int)
    ei = np.concatenate(rows) if rows else np.zeros(0, dtype=int)
    ti = np.concatenate(cols) if cols else np.zeros(0, dtype=int)
    pe, te, re_ = e_phi[scene, ei], e_theta[scene, ei], e_r[scene, ei]
    pt, tt, rt = t_phi[scene, ti], t_theta[scene, ti], t_r[scene, ti]
    finite = np.isfinite(re_) & np.isfinite(rt)
    with np.errstate(invalid="ignore"):
        r_err = np.where(finite, re_ - rt, np.nan)
    u_hat = _as_numpy(unit_direction(torch.from_numpy(pe), torch.from_numpy(te)))
    u = _as_numpy(unit_direction(torch.from_numpy(pt), torch.from_numpy(tt)))
    safe_re, safe_rt = np.where(finite, re_, 0.0), np.where(finite, rt, 0.0)
    pos_err = np.linalg.norm(safe_re[:, None] * u_hat - safe_rt[:, None] * u, axis=-1)
    pos_err = np.where(finite, pos_err, np.nan)
    return Matching(scene=scene, est_index=ei, true_index=ti, phi_err=pe - pt, theta_err=te - tt,
                    r_err=r_err, angle=dist[scene, ei, ti], position_err=pos_err,
                    n_estimates=int(e_mask.sum()), n_sources=int(t_mask.sum()))


def _rms(x: np.ndarray) -> float | None:
    if x.size == 0 or np.isnan(x).all():
        return None
    return float(np.sqrt(np.mean(np.square(x))))


def localization_metrics(matching: Matching, *, tolerance_deg: float = 1.0) -> dict[str, float | None]:
    """Pooled metrics of a :class:`Matching`.

    rmse_phi_deg, rmse_theta_deg, rmse_angle_deg (great-circle), rmse_r_m, rmse_pos_m
    (None in the far field), median_angle_deg; within_1deg: share of true sources whose
    matched estimate is within 1 deg (unmatched sources count as misses);
    precision / recall / f1 at ``tolerance_deg``: a matched pair within tolerance is a
    hit; precision divides by the estimates, recall by the sources. Empty pools give None.
    """
    if not tolerance_deg > 0:
        raise ValueError(f"the matching tolerance must be positive but got {tolerance_deg=}")
    m = matching
    deg = 180.0 / math.pi
    hits = int(np.sum(m.angle <= math.radians(tolerance_deg)))
    within = int(np.sum(m.angle <= math.radians(1.0)))
    precision = hits / m.n_estimates if m.n_estimates else None
    recall = hits / m.n_sources if m.n_sources else None
    f1 = (2 * hits / (m.n_estimates + m.n_sources)) if (m.n_estimates + m.n_sources) else None
    finite_r = m.r_err[np.isfinite(m.r_err)]
    finite_pos = m.position_err[np.isfinite(m.position_err)]
    return {
        "rmse_phi_deg": None if (r := _rms(m.phi_err)) is None else r * deg,
        "rmse_theta_deg": None if (r := _rms(m.theta_err)) is None else r * deg,
        "rmse_angle_deg": None if (r := _rms(m.angle)) is None else r * deg,
        "median_angle_deg": float(np.median(m.angle)) * deg if m.angle.size else None,
        "rmse_r_m": _rms(finite_r),
        "rmse_pos_m": _rms(finite_pos),
        "within_1deg": within / m.n_sources if m.n_sources else None,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tolerance_deg": float(tolerance_deg),
        "n_matched": int(m.angle.size),
        "n_estimates": m.n_estimates,
        "n_sources": m.n_sources,
    }


def evaluate_estimates(estimates, phi: torch.Tensor, theta: torch.Tensor, r: torch.Tensor, mask: torch.Tensor,
                       *, tolerance_deg: float = 1.0) -> dict[str, float | None]:
    """Match an :class:`~ris_model.estimators.search.Estimates` to labels and pool the metrics."""
    matching = match_sources(estimates.phi, estimates.theta, estimates.r, estimates.mask, phi, theta, r, mask)
    return localization_metrics(matching, tolerance_deg=tolerance_deg)


__all__ = ["Matching", "evaluate_estimates", "localization_metrics", "match_sources"]

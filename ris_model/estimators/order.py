"""How many sources: model-order selection on the eigenvalues of a covariance.

MDL (Wax & Kailath) picks the k whose N - k weakest eigenvalues look most alike (their
geometric over arithmetic mean closest to 1), penalised by the k (2N - k) real
parameters of a rank-k complex covariance. The threshold rule counts eigenvalues above a
fraction of the largest: cruder, but it makes no claim about snapshot statistics, which
R_ls and R_bp do not follow anyway.
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def mdl_order(eigenvalues: torch.Tensor, snapshots: int, *, k_min: int = 0, k_max: int | None = None,
              floor: float = 1e-6) -> torch.Tensor:
    """MDL estimate of the number of sources from eigenvalues (B, N) (any order): (B,) long.

    Eigenvalues are clipped at ``floor`` times the largest: the exact R has true zeros
    (and rounding noise around them), whose log would make every k look infinitely wrong.
    The search is limited to [k_min, k_max] (k_max defaults to N - 1).
    """
    if snapshots < 1:
        raise ValueError(f"MDL needs a positive number of snapshots but got {snapshots=}")
    lam = eigenvalues.real.to(torch.float64).sort(dim=-1, descending=True).values  # (B, N)
    n = lam.shape[-1]
    k_max = n - 1 if k_max is None else min(k_max, n - 1)
    if not 0 <= k_min <= k_max:
        raise ValueError(f"need 0 <= k_min <= k_max < N={n} but got {k_min=}, {k_max=}")
    lam = lam.clamp_min(lam[..., :1].clamp_min(torch.finfo(lam.dtype).tiny) * floor)
    log_lam = lam.log()
    scores = []
    for k in range(k_min, k_max + 1):
        tail, log_tail = lam[..., k:], log_lam[..., k:]
        log_geo = log_tail.mean(-1)
        log_arith = tail.mean(-1).log()
        fit = -snapshots * (n - k) * (log_geo - log_arith)
        penalty = 0.5 * k * (2 * n - k) * math.log(snapshots)
        scores.append(fit + penalty)
    return torch.stack(scores, dim=-1).argmin(-1) + k_min


def threshold_order(eigenvalues: torch.Tensor, *, threshold: float = 0.05, k_min: int = 0,
                    k_max: int | None = None) -> torch.Tensor:
    """Number of eigenvalues above ``threshold`` times the largest, clamped to [k_min, k_max]."""
    if not 0 < threshold < 1:
        raise ValueError(f"the eigenvalue threshold must lie in (0, 1) but got {threshold=}")
    lam = eigenvalues.real
    top = lam.amax(-1, keepdim=True)
    k = (lam > threshold * top).sum(-1)
    return k.clamp(k_min, lam.shape[-1] if k_max is None else k_max)


def estimate_order(R: torch.Tensor, snapshots: int, *, method: Literal["mdl", "threshold"] = "mdl",
                   k_min: int = 1, k_max: int | None = None, threshold: float = 0.05) -> torch.Tensor:
    """Estimated number of sources of each covariance R (B, N, N): (B,) long in [k_min, k_max]."""
    lam = torch.linalg.eigvalsh(0.5 * (R + R.mH))
    if method == "mdl":
        return mdl_order(lam, snapshots, k_min=k_min, k_max=k_max)
    if method == "threshold":
        return threshold_order(lam, threshold=threshold, k_min=k_min, k_max=k_max)
    raise ValueError(f"order method must be 'mdl' or 'threshold' but got {method=}")


__all__ = ["estimate_order", "mdl_order", "threshold_order"]

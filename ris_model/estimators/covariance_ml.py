"""Likelihood steps on a low-rank covariance factor: what the snapshots say beyond R_bp and R_ls.

R_bp and R_ls are moment estimates: they average products of the snapshots and throw
away that each snapshot y_l ~ CN(0, Phi_l R Phi_l^H + s^2 I) was seen through its own
code. The Gaussian likelihood of the snapshots keeps that, and a few gradient steps on
it from R_bp's dominant factor already sharpen the subspace MUSIC searches. The steps
are written out in closed form (no autograd inside), so that a network can unroll them
and be trained through them with an ordinary backward pass, and so that the classical
row ``music_ml`` runs the very same arithmetic with fixed step sizes.

The snapshots are whitened first (y / s), so the noise covariance is I and one step size
means the same thing at every SNR; each step moves the factor by a fixed fraction of its
own norm along the normalised gradient, which makes the steps scale-free too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ris_model.estimators.covariance import _check_shapes, normalise_trace

# The fixed schedule of the classical row: ten steps of 10% of the factor's norm. Enough
# for the within-1° share to level off on the tiny and small presets at 10 dB.
DEFAULT_STEPS = 10
DEFAULT_STEP = 0.1


@dataclass(frozen=True)
class Snapshots:
    """The receiver's view of a batch of scenes, whitened: y / s with noise covariance I."""

    y: torch.Tensor  # (B, L, M) complex, whitened
    codes: torch.Tensor  # (B, L, N) complex, unit modulus
    H: torch.Tensor  # (B, M, N) complex

    @classmethod
    def whitened(cls, y: torch.Tensor, codes: torch.Tensor, H: torch.Tensor, noise_var: torch.Tensor) -> Snapshots:
        """Snapshots ``y`` with per-scene noise variance ``noise_var`` (B,), whitened."""
        _check_shapes(y, codes, H)
        scale = noise_var.to(y.real.dtype).clamp_min(torch.finfo(y.real.dtype).tiny).rsqrt()
        return cls(y=y * scale[:, None, None], codes=codes.to(y.dtype), H=H.to(y.dtype))

    def to(self, dtype: torch.dtype) -> Snapshots:
        return Snapshots(**{f.name: getattr(self, f.name).to(dtype) for f in fields(self)})

    def images(self, F: torch.Tensor) -> torch.Tensor:
        """Phi_l F for every snapshot l: (B, N, K) -> (B, L, M, K)."""
        b, l, m = self.y.shape
        n, k = F.shape[-2:]
        z = (self.codes.mT.unsqueeze(-1) * F.unsqueeze(-2)).reshape(b, n, l * k)  # (B, N, L K)
        return (self.H @ z).view(b, m, l, k).transpose(1, 2)

    def back(self, X: torch.Tensor) -> torch.Tensor:
        """sum_l Phi_l^H X_l for X (B, L, M, K): the adjoint of :meth:`images`, (B, N, K)."""
        b, l, m, k = X.shape
        z = self.H.mH @ X.transpose(1, 2).reshape(b, m, l * k)  # (B, N, L K)
        return (self.codes.mT.conj().unsqueeze(-1) * z.view(b, -1, l, k)).sum(-2)


def nll_and_gradient(F: torch.Tensor, snaps: Snapshots) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative log-likelihood per scene (B,) of the whitened snapshots under R = F F^H, and its
    gradient with respect to conj(F) (B, N, K): sum_l Phi_l^H (C_l^-1 - C_l^-1 y_l y_l^H C_l^-1) Phi_l F,
    with C_l = G_l G_l^H + I and G_l = Phi_l F.

    Everything goes through the K x K matrix T_l = I + G_l^H G_l (Woodbury and the
    determinant lemma): C_l^-1 G_l = G_l T_l^-1, C_l^-1 y_l = y_l - G_l T_l^-1 G_l^H y_l and
    log det C_l = log det T_l. K is below M, and one batched solve gives both products.
    """
    G = snaps.images(F)  # (B, L, M, K)
    k = G.shape[-1]
    eye = torch.eye(k, dtype=G.dtype, device=G.device)
    chol = torch.linalg.cholesky(eye + G.mH @ G)  # (B, L, K, K)
    y = snaps.y.unsqueeze(-1)  # (B, L, M, 1)
    gy = G.mH @ y  # (B, L, K, 1)
    solved = torch.cholesky_solve(torch.cat([eye.expand(*gy.shape[:-1], k), gy], dim=-1), chol)
    t_inv, t_inv_gy = solved[..., :k], solved[..., k:]
    u = y - G @ t_inv_gy  # C^-1 y
    grad = snaps.back(G @ t_inv - u @ (u.mH @ G))
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1).real).sum(-1)  # (B, L)
    quad = (y.mH @ u).real.squeeze(-1).squeeze(-1)
    return (logdet + quad).sum(-1), grad


def at_snapshot_scale(F: torch.Tensor, snaps: Snapshots) -> torch.Tensor:
    """F rescaled so that its images carry the snapshots' signal energy (mean ||y_l||^2 - M,
    floored at -10 dB): a trace-normalised factor is on no scale the likelihood knows.

    A factor with no energy at all is left as it is: scaling 0 by 1 / sqrt(tiny) returns 0
    but multiplies its gradient by ~1e19, which would hide a network that outputs nothing
    (all-zero weights) behind a gradient that looks alive.
    """
    m = snaps.y.shape[-1]
    gain = snaps.images(F).abs().square().sum((-1, -2)).mean(-1)  # (B,)
    signal = (snaps.y.abs().square().sum(-1).mean(-1) - m).clamp_min(0.1 * m)
    alive = gain > 0
    scale = torch.where(alive, signal / torch.where(alive, gain, torch.ones_like(gain)), torch.ones_like(gain))
    return F * scale.sqrt().to(F.dtype)[:, None, None]


def likelihood_step(F: torch.Tensor, snaps: Snapshots, step: torch.Tensor | float) -> torch.Tensor:
    """One descent step on the NLL that moves each scene's F by ``step`` times its own norm."""
    _, grad = nll_and_gradient(F, snaps)
    tiny = torch.finfo(F.real.dtype).tiny
    g_norm = torch.linalg.vector_norm(grad, dim=(-2, -1), keepdim=True).clamp_min(tiny)
    f_norm = torch.linalg.vector_norm(F, dim=(-2, -1), keepdim=True)
    return F - step * f_norm * grad / g_norm


def refine_factor(F: torch.Tensor, snaps: Snapshots, steps: Sequence[torch.Tensor | float]) -> torch.Tensor:
    """``F`` (any scale) after one :func:`likelihood_step` per entry of ``steps``, at snapshot scale."""
    F = at_snapshot_scale(F, snaps)
    for step in steps:
        F = likelihood_step(F, snaps, step)
    return F


def dominant_factor(R: torch.Tensor, k: int) -> torch.Tensor:
    """U_k diag(sqrt(lambda_k)) of the k dominant eigenpairs of a Hermitian R, (B, N, k)."""
    evals, evecs = torch.linalg.eigh(R)  # ascending
    return evecs[..., -k:].flip(-1) * evals[..., -k:].flip(-1).clamp_min(0).sqrt().unsqueeze(-2).to(evecs.dtype)


def r_ml(y: torch.Tensor, codes: torch.Tensor, H: torch.Tensor, noise_var: torch.Tensor, rank: int, *,
         start: torch.Tensor, steps: int = DEFAULT_STEPS, step: float = DEFAULT_STEP) -> torch.Tensor:
    """R_bp refined by ``steps`` fixed likelihood steps on its rank-``rank`` factor: trace N, (B, N, N).

    ``start`` is the covariance to start from (R_bp, already computed by the caller).
    """
    if steps < 0 or not step >= 0:
        raise ValueError(f"steps must be >= 0 and step >= 0 but got {steps=}, {step=}")
    dtype = torch.complex128
    snaps = Snapshots.whitened(y.to(dtype), codes.to(dtype), H.to(dtype), noise_var.to(torch.float64))
    F = refine_factor(dominant_factor(start.to(dtype), rank), snaps, [step] * steps)
    return normalise_trace(F @ F.mH, codes.shape[-1]).to(y.dtype)


__all__ = ["DEFAULT_STEP", "DEFAULT_STEPS", "Snapshots", "at_snapshot_scale", "dominant_factor", "likelihood_step",
           "nll_and_gradient", "r_ml", "refine_factor"]

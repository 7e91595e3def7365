"""All K sources of a scene fitted to its signal subspace at once, not one valley each.

MUSIC finds each source as its own minimum of the null spectrum. Two sources closer
than about a beamwidth share one valley: MUSIC puts one estimate between them and the
other on some unrelated ripple, a gross error even when the subspace is accurate. The
subspace-fitting criterion

    f(x_1..x_K) = ||P_A^perp Q||_F^2,   A = [a(x_1) .. a(x_K)],  Q the signal basis (N, K),

asks whether the K steering vectors together span Q, so two sources in one valley fit
better than one source there and one elsewhere. It is minimised here by

1. Levenberg-Marquardt on all K locations jointly from MUSIC's peaks, with the
   Jacobian of the projector in closed form;
2. an alternating-projection sweep: each source in turn is moved to the grid point that
   best explains what the others leave of Q, refined jointly again, and the move is
   kept only where f falls.

With K = 1 the criterion is MUSIC's own, so single-source scenes are left as they are.
Every scene keeps its MUSIC estimate unless the fit improves f, so the result is never
a worse fit to the subspace than MUSIC's.
"""

from __future__ import annotations

import math

import torch

from ris_model.config import SystemConfig
from ris_model.estimators.grid import SearchGrid, steering_energies
from ris_model.estimators.refine import levenberg_marquardt, steering_and_jacobian
from ris_model.physics.geometry import system_positions, wavenumber

# Below this energy outside the fixed sources' span a grid point is one of them.
_OWN_SPAN = 0.05


def _steering(x: torch.Tensor, positions: torch.Tensor, k0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, N, K) and its derivatives (B, N, K, 3) for locations x (B, K, 3)."""
    b, k, _ = x.shape
    a, da = steering_and_jacobian(x.reshape(b * k, 3), positions, k0)
    n = a.shape[-1]
    return a.view(b, k, n).mT, da.view(b, k, n, 3).permute(0, 2, 1, 3)


def _pseudo_inverse(A: torch.Tensor) -> torch.Tensor:
    """A^+ = (A^H A)^-1 A^H (B, K, N), with a loading that keeps coincident columns finite."""
    gram = A.mH @ A
    load = 1e-12 * torch.diagonal(gram, dim1=-2, dim2=-1).real.sum(-1)[:, None, None]
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + load * eye, A.mH)


def fit_objective(x: torch.Tensor, basis: torch.Tensor, positions: torch.Tensor, k0: float, dims: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f = ||P_A^perp Q||^2 with its gradient Re(J^H e) and Gauss-Newton matrix Re(J^H J).

    x (B, K, 3), basis Q (B, N, K); the parameters are the first ``dims`` coordinates of
    every source, source-major. With E = P^perp Q and dA = d e_k^T,
    dE = -P^perp d (A^+ Q)_k - (A^+)^H e_k (d^H E): two rank-one terms per parameter.
    Returns (B,), (B, K dims), (B, K dims, K dims).
    """
    b, k, _ = x.shape
    A, D = _steering(x, positions, k0)
    n = A.shape[1]
    pinv = _pseudo_inverse(A)  # (B, K, N)
    coef = pinv @ basis  # (B, K, K): A^+ Q
    E = basis - A @ coef  # (B, N, K)
    Dk = D[..., :dims].reshape(b, n, k * dims)  # column (source, coordinate)
    PD = Dk - A @ (pinv @ Dk)  # P^perp D
    DE = Dk.mH @ E  # (B, K dims, K)
    J = -(PD.unsqueeze(-1) * coef.repeat_interleave(dims, dim=1).unsqueeze(1)) \
        - (pinv.mH.repeat_interleave(dims, dim=2).unsqueeze(-1) * DE.unsqueeze(1))  # (B, N, K dims, K)
    J = J.permute(0, 2, 1, 3).reshape(b, k * dims, n * k)
    e = E.reshape(b, n * k)
    f = e.real.square().sum(-1) + e.imag.square().sum(-1)
    grad = (J.conj() @ e.unsqueeze(-1)).squeeze(-1).real
    gn = (J.conj() @ J.mT).real
    return f, grad, gn


def _refine_jointly(x: torch.Tensor, basis: torch.Tensor, positions: torch.Tensor, k0: float, *,
                    lower: torch.Tensor, upper: torch.Tensor, dims: int, iterations: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    b, k, _ = x.shape
    rest = x[..., dims:]

    def objective(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f, grad, gn = fit_objective(torch.cat([p.view(b, k, dims), rest], dim=-1), basis, positions, k0, dims)
        return f.unsqueeze(1), grad.unsqueeze(1), gn.unsqueeze(1)

    p, f = levenberg_marquardt(objective, x[..., :dims].reshape(b, 1, k * dims),
                               lower=lower[:dims].repeat(k), upper=upper[:dims].repeat(k), iterations=iterations)
    return torch.cat([p.view(b, k, dims), rest], dim=-1), f.squeeze(1)


def _relocation_targets(x: torch.Tensor, j: int, basis: torch.Tensor, positions: torch.Tensor, k0: float,
                        grid: SearchGrid) -> torch.Tensor:
    """Per scene, the grid point (B, 3) that best explains what the other sources leave of Q.

    With U an orthonormal basis of the others' steering vectors and Q' = P_U^perp Q, a
    new source a adds ||Q'^H a||^2 / ||P_U^perp a||^2 to the fit (RAP-MUSIC's spectrum).
    """
    others = torch.cat([x[:, :j], x[:, j + 1:]], dim=1)
    A, _ = _steering(others, positions, k0)
    U, _ = torch.linalg.qr(A, mode="reduced")  # (B, N, K-1)
    left = basis - U @ (U.mH @ basis)  # (B, N, K)
    gt = grid.shape[2]
    b, _, k = basis.shape
    payload = torch.cat([left, U], dim=-1).conj()  # (B, N, 2K-1)
    best = torch.full((b,), -math.inf, dtype=grid.steering.real.dtype, device=basis.device)
    where = torch.zeros((b, 3), dtype=torch.long, device=basis.device)
    for p, sl, energy in steering_energies(payload, grid):  # energy (G, c, 2K-1)
        outside = 1.0 - energy[..., k:].sum(-1)  # ||P_U^perp a||^2 with ||a|| = 1
        gain = torch.where(outside > _OWN_SPAN, energy[..., :k].sum(-1) / outside.clamp_min(_OWN_SPAN),
                           torch.full_like(outside, -math.inf))
        value, idx = gain.max(0)  # (c,)
        better = value > best[sl]
        best[sl] = torch.where(better, value, best[sl])
        cell = torch.stack([torch.full_like(idx, p), idx // gt, idx % gt], dim=-1)
        where[sl] = torch.where(better[:, None], cell, where[sl])
    return torch.stack([grid.phi[where[:, 1]], grid.theta[where[:, 2]], grid.rho[where[:, 0]]], dim=-1).to(x)


def fit_subspace(x: torch.Tensor, basis: torch.Tensor, system: SystemConfig, grid: SearchGrid, *,
                 sweeps: int = 1, iterations: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine the K locations x (B, K, 3) of every scene jointly on its basis Q (B, N, K).

    x is (phi, theta, rho = 1/r); all scenes have the same K (group them by K first).
    Returns the fitted x and f = ||P_A^perp Q||^2 (B,). Cost per scene and sweep: K grid
    passes of O(G N K) and K + 1 joint refinements of O(iterations N K^2 dims).
    """
    b, k, _ = x.shape
    if b == 0 or k < 2:
        return x, torch.zeros(b, dtype=basis.real.dtype, device=basis.device)
    dims = 3 if system.near_field else 2
    real = basis.real.dtype
    positions = system_positions(system, device=basis.device).to(real)
    k0 = wavenumber(system)
    lower, upper = grid.lower().to(real), grid.upper().to(real)
    x = x.to(real)
    x, f = _refine_jointly(x, basis, positions, k0, lower=lower, upper=upper, dims=dims, iterations=iterations)
    for _ in range(sweeps):
        for j in range(k):
            moved = x.clone()
            moved[:, j] = _relocation_targets(x, j, basis, positions, k0, grid)
            moved, f_moved = _refine_jointly(moved, basis, positions, k0, lower=lower, upper=upper, dims=dims,
                                             iterations=iterations)
            better = f_moved < f
            x = torch.where(better[:, None, None], moved, x)
            f = torch.where(better, f_moved, f)
    return x, f


__all__ = ["fit_objective", "fit_subspace"]

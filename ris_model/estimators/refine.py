"""Off-grid refinement of spectrum peaks by Levenberg–Marquardt.

Both MUSIC and MVDR peaks are minima of ||W a(x)||^2 for a per-scene matrix W: the
noise projector I - Q Q^H for MUSIC, the whitener (R + delta I)^(-1/2) for MVDR. That is
a nonlinear least-squares problem in x = (phi, theta[, rho = 1/r]), so Gauss–Newton
converges quadratically where the residual vanishes (MUSIC on the exact R: errors far
below 1e-6 deg in a few steps) and Marquardt damping keeps every step a descent step
where it does not (estimated covariances, MVDR).

Working with the residual vector W a instead of the scalar spectrum also avoids the
cancellation in ||a||^2 - ||Q^H a||^2, which would cap the attainable precision at
about sqrt(machine epsilon).

The range is refined as rho = 1/r, the variable in which the phase is (nearly) linear.
"""

from __future__ import annotations

import math

import torch


def spherical_phase(w: torch.Tensor, rho: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """(d_n - r) per element from w = u . q_n, rho = 1/r (broadcast) and q2 = |q_n|^2.

    d_n - r = (rho |q|^2 - 2 u.q) / (1 + s_n), s_n = |u - rho q_n| = d_n / r: the exact
    spherical wave without the cancellation of d_n - r at large r, and rho = 0 gives the
    far-field -u.q without a special case.
    """
    s = torch.sqrt((1 - 2 * rho * w + rho.square() * q2).clamp_min(0.0))
    return (rho * q2 - 2 * w) / (1 + s)


def steering_and_jacobian(x: torch.Tensor, positions: torch.Tensor, k0: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """a(phi, theta, rho) and da/d(phi, theta, rho) for x (P, 3) real: (P, N) and (P, N, 3).

    The exact spherical wave of physics.md, a_n = exp(-j k0 (d_n - r)) / sqrt(N), written
    in rho = 1/r so that rho = 0 is the far field without a special case:
    d_n - r = (rho |q|^2 - 2 u.q) / (1 + s_n), s_n = |u - rho q_n| = d_n / r.
    """
    n = positions.shape[0]
    phi, theta, rho = x.unbind(-1)
    cp, sp, ct, st = torch.cos(phi), torch.sin(phi), torch.cos(theta), torch.sin(theta)
    u = torch.stack([sp * ct, st, cp * ct], dim=-1)  # (P, 3)
    u_phi = torch.stack([cp * ct, torch.zeros_like(ct), -sp * ct], dim=-1)
    u_theta = torch.stack([-sp * st, ct, -cp * st], dim=-1)
    w = u @ positions.T  # (P, N): u . q_n
    q2 = positions.square().sum(-1)  # (N,)
    rho_ = rho.unsqueeze(-1)
    s = torch.sqrt((1 - 2 * rho_ * w + rho_.square() * q2).clamp_min(0.0))  # (P, N)
    excess = (rho_ * q2 - 2 * w) / (1 + s)  # d_n - r
    psi = -k0 * excess
    dpsi_phi = k0 * (u_phi @ positions.T) / s
    dpsi_theta = k0 * (u_theta @ positions.T) / s
    dpsi_rho = -k0 * (q2 - w.square()) / (s * (1 - rho_ * w + s))
    a = torch.polar(torch.full_like(psi, 1.0 / math.sqrt(n)), psi)  # (P, N)
    dpsi = torch.stack([dpsi_phi, dpsi_theta, dpsi_rho], dim=-1)  # (P, N, 3)
    return a, 1j * a.unsqueeze(-1) * dpsi


def _objective(x: torch.Tensor, W: torch.Tensor, positions: torch.Tensor, k0: float, dims: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f = ||W a||^2, gradient Re(J^H g) and Gauss–Newton matrix Re(J^H J) in the first ``dims``."""
    a, da = steering_and_jacobian(x, positions, k0)
    g = (W @ a.unsqueeze(-1)).squeeze(-1)  # (P, m)
    jac = W @ da[..., :dims]  # (P, m, dims)
    f = g.real.square().sum(-1) + g.imag.square().sum(-1)
    grad = (jac.conj().mT @ g.unsqueeze(-1)).squeeze(-1).real  # (P, dims)
    gn = (jac.conj().mT @ jac).real  # (P, dims, dims)
    return f, grad, gn


def peak_objective(x: torch.Tensor, W: torch.Tensor, positions: torch.Tensor, k0: float) -> torch.Tensor:
    """||W_p a(x_p)||^2 for x (P, 3) and W (P, m, N): the quantity refinement minimises, (P,)."""
    a, _ = steering_and_jacobian(x, positions, k0)
    g = (W @ a.unsqueeze(-1)).squeeze(-1)
    return g.real.square().sum(-1) + g.imag.square().sum(-1)


def refine_peaks(x0: torch.Tensor, W: torch.Tensor, positions: torch.Tensor, k0: float, *,
                 lower: torch.Tensor, upper: torch.Tensor, near_field: bool,
                 iterations: int = 40, damping: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ||W_p a(x_p)||^2 from x0 for every peak p; returns (x, f), (P, 3) and (P,).

    x0 (P, 3) = (phi, theta, rho) in radians and 1/m; W (P, m, N) per peak; the result is
    clamped to [lower, upper] (3,). The far field refines (phi, theta) with rho fixed.
    Every accepted step lowers f, so the result is never worse than the grid point it
    started from. Cost O(iterations * m * N) per peak.
    """
    dims = 3 if near_field else 2
    work = W.dtype
    real = work.to_real()
    x = x0.to(real).clone()
    positions = positions.to(real)
    lower, upper = lower.to(x), upper.to(x)
    mu = torch.full(x.shape[:1], damping, dtype=real, device=x.device)
    f, grad, gn = _objective(x, W, positions, k0, dims)
    eye = torch.eye(dims, dtype=real, device=x.device)
    tiny = torch.finfo(real).tiny
    for _ in range(iterations):
        diag = torch.diagonal(gn, dim1=-2, dim2=-1)  # (P, dims)
        scale = diag + diag.amax(-1, keepdim=True) * 1e-12 + tiny
        lhs = gn + mu[:, None, None] * torch.diag_embed(scale)
        step = -torch.linalg.solve(lhs + tiny * eye, grad.unsqueeze(-1)).squeeze(-1)  # (P, dims)
        step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        x_new = x.clone()
        x_new[:, :dims] = torch.minimum(torch.maximum(x[:, :dims] + step, lower[:dims]), upper[:dims])
        f_new, grad_new, gn_new = _objective(x_new, W, positions, k0, dims)
        better = f_new < f
        x = torch.where(better[:, None], x_new, x)
        f = torch.where(better, f_new, f)
        grad = torch.where(better[:, None], grad_new, grad)
        gn = torch.where(better[:, None, None], gn_new, gn)
        mu = torch.where(better, (mu / 3).clamp_min(1e-12), (mu * 4).clamp_max(1e12))
        if bool((~better & (mu >= 1e12)).all()):
            break
    return x, f


__all__ = ["peak_objective", "refine_peaks", "steering_and_jacobian"]

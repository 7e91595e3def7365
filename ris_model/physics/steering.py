"""Steering vectors: the exact spherical wave at the RIS, its far-field limit, the BS ULA."""

from __future__ import annotations

import math

import torch

from ris_model.physics.geometry import unit_direction


def ris_steering(phi: torch.Tensor, theta: torch.Tensor, r: torch.Tensor | None,
                 positions: torch.Tensor, k0: float) -> torch.Tensor:
    """a_n = exp(-j k0 (||p - q_n|| - r)) / sqrt(N), p = r u(phi, theta); shape (..., N).

    ``r=None`` (or an infinite r) gives the far-field limit exp(j k0 u . q_n) / sqrt(N).
    No Fresnel approximation: the near field is the exact spherical wave. Subtracting r
    keeps the phase referenced to the aperture centre, so the vector is continuous in r
    and tends to the far-field one.
    """
    n = positions.shape[0]
    u = unit_direction(phi, theta)  # (..., 3)
    if r is None:
        phase = k0 * (u @ positions.T)  # (..., N)
    else:
        r = torch.as_tensor(r, dtype=u.dtype, device=u.device)
        far = torch.isinf(r)
        r_safe = torch.where(far, torch.ones_like(r), r)
        p = r_safe.unsqueeze(-1) * u  # (..., 3)
        dist = torch.linalg.vector_norm(p.unsqueeze(-2) - positions, dim=-1)  # (..., N)
        phase = -k0 * (dist - r_safe.unsqueeze(-1))
        if far.any():
            phase = torch.where(far.unsqueeze(-1), k0 * (u @ positions.T), phase)
    return torch.polar(torch.full_like(phase, 1.0 / math.sqrt(n)), phase)


def ula_steering(psi: torch.Tensor, m: int) -> torch.Tensor:
    """Half-wavelength ULA response with unit-modulus entries, shape (..., M)."""
    idx = torch.arange(m, dtype=psi.dtype, device=psi.device)
    phase = math.pi * idx * torch.sin(psi).unsqueeze(-1)
    return torch.polar(torch.ones_like(phase), phase)

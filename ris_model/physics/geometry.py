"""Where the RIS elements are, and the unit direction of a source.

The aperture is centred on the origin (docs/physics.md): a corner origin would make the
per-coordinate CRB depend on an arbitrary choice.
"""

from __future__ import annotations

import math

import torch

from ris_model.config import SystemConfig


def ris_positions(nx: int, ny: int, spacing: float, *, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Element coordinates q_n = (x_n, y_n, 0), (N, 3), flattened x-major (n = ix * ny + iy)."""
    xs = (torch.arange(nx, dtype=dtype, device=device) - (nx - 1) / 2) * spacing
    ys = (torch.arange(ny, dtype=dtype, device=device) - (ny - 1) / 2) * spacing
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1), torch.zeros(nx * ny, dtype=dtype, device=device)], dim=-1)


def system_positions(system: SystemConfig, *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """The RIS of ``system`` at half-wavelength spacing, (N, 3) in metres."""
    return ris_positions(system.nx, system.ny, system.wavelength / 2, dtype=dtype, device=device)


def wavenumber(system: SystemConfig) -> float:
    return 2 * math.pi / system.wavelength


def unit_direction(phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """u(phi, theta) = (sin phi cos theta, sin theta, cos phi cos theta), shape (..., 3).

    Boresight (phi = theta = 0) is +z, the RIS normal.
    """
    return torch.stack([torch.sin(phi) * torch.cos(theta), torch.sin(theta),
                        torch.cos(phi) * torch.cos(theta)], dim=-1)


def angular_distance(phi1: torch.Tensor, theta1: torch.Tensor,
                     phi2: torch.Tensor, theta2: torch.Tensor) -> torch.Tensor:
    """Great-circle angle between two directions, radians; broadcasts."""
    u1, u2 = unit_direction(phi1, theta1), unit_direction(phi2, theta2)
    cos = (u1 * u2).sum(-1).clamp(-1.0, 1.0)
    return torch.arccos(cos)

"""The coarse search grid over (phi, theta) and, in the near field, range planes.

Range planes are uniform in 1/r: the wavefront curvature across the aperture is linear
in 1/r (the Fresnel term k0 |q|^2 / 2r), so equal steps in 1/r are equal steps in phase.
The grid's steering matrix is the expensive part (up to 24 x 121 x 61 x 144 entries
for the paper preset) and is the same for every scene of a system, so it is cached.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ris_model.config import SystemConfig
from ris_model.estimators.refine import spherical_phase
from ris_model.physics.geometry import system_positions, unit_direction, wavenumber

DEFAULT_STEP_DEG = 1.0


@dataclass(frozen=True, eq=False)
class SearchGrid:
    """Grid axes and the steering vector of every grid point.

    ``steering`` is (P, G_phi, G_theta, N); plane p sits at range 1 / ``rho[p]``
    (``rho`` = [0] in the far field). The bounds are the search box that refinement
    is clamped to.
    """

    phi: torch.Tensor  # (G_phi,) radians, float64
    theta: torch.Tensor  # (G_theta,) radians, float64
    rho: torch.Tensor  # (P,) inverse range, 1/m, float64; [0.] in the far field
    steering: torch.Tensor  # (P, G_phi, G_theta, N) complex
    near_field: bool
    step: float  # radians

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.rho.numel(), self.phi.numel(), self.theta.numel())

    @property
    def n_points(self) -> int:
        p, gp, gt = self.shape
        return p * gp * gt

    def lower(self) -> torch.Tensor:
        """(3,) float64: lower bounds of (phi, theta, rho)."""
        return torch.stack([self.phi[0], self.theta[0], self.rho[0]])

    def upper(self) -> torch.Tensor:
        return torch.stack([self.phi[-1], self.theta[-1], self.rho[-1]])


def _axis(half_width: float, step: float) -> torch.Tensor:
    count = max(2, math.ceil(2 * half_width / step - 1e-9) + 1)
    return torch.linspace(-half_width, half_width, count, dtype=torch.float64)


def range_planes(system: SystemConfig) -> torch.Tensor:
    """Inverse ranges of the near-field search planes, (P,) float64, uniform in 1/r.

    The planes include both ends of [1 / r_max, 1 / r_min]; one plane sits midway.
    A far-field system has the single plane rho = 0.
    """
    if not system.near_field:
        return torch.zeros(1, dtype=torch.float64)
    lo, hi = 1.0 / system.r_max, 1.0 / system.r_min
    if system.range_planes == 1:
        return torch.tensor([0.5 * (lo + hi)], dtype=torch.float64)
    return torch.linspace(lo, hi, system.range_planes, dtype=torch.float64)


@functools.lru_cache(maxsize=8)
def _cached_grid(system: SystemConfig, step_deg: float, dtype: torch.dtype, device: str) -> SearchGrid:
    phi_max, theta_max = system.angle_bounds_rad()
    step = math.radians(step_deg)
    phi, theta, rho = _axis(phi_max, step), _axis(theta_max, step), range_planes(system)
    positions = system_positions(system)
    pp, tt = torch.meshgrid(phi, theta, indexing="ij")  # (G_phi, G_theta)
    # The grid's own precision is enough for its phases (|phase error| ~ k0 |q| eps: 3e-6 rad
    # in float32) and halves the cost of building the paper grid.
    real = dtype.to_real()
    w = (unit_direction(pp, tt) @ positions.T).to(real)  # (G_phi, G_theta, N): u . q_n
    q2 = positions.square().sum(-1).to(real)  # (N,)
    k0, n = wavenumber(system), positions.shape[0]
    planes = []
    for rho_p in rho.tolist():
        # the same spherical wave as ris_steering, without its (..., N, 3) intermediate
        psi = -k0 * spherical_phase(w, torch.tensor(rho_p, dtype=real), q2)
        planes.append(torch.polar(torch.full_like(psi, 1.0 / math.sqrt(n)), psi))
    steering = torch.stack(planes).to(dtype=dtype, device=device)
    return SearchGrid(phi=phi.to(device), theta=theta.to(device), rho=rho.to(device), steering=steering,
                      near_field=system.near_field, step=step)


def search_grid(system: SystemConfig, *, step_deg: float = DEFAULT_STEP_DEG,
                dtype: torch.dtype = torch.complex64, device: torch.device | str | None = None) -> SearchGrid:
    """The (cached) search grid of ``system`` with about ``step_deg`` between grid points.

    complex64 is enough for the coarse stage: refinement re-evaluates the spectrum in
    complex128 off the grid.
    """
    if not step_deg > 0:
        raise ValueError(f"the grid step must be positive but got {step_deg=}")
    device = str(torch.device(device)) if device is not None else "cpu"
    return _cached_grid(system, float(step_deg), dtype, device)


# Scene-chunk budget of a pass over the grid, in complex entries of the (chunk, G, width)
# intermediate; about 64 MB in complex64.
_CHUNK_ENTRIES = 1 << 23


def steering_energies(right: torch.Tensor, grid: SearchGrid) -> Iterator[tuple[int, slice, torch.Tensor]]:
    """|a_g^T r_w|^2 for every grid steering vector a_g and every column r_w of each scene's
    ``right`` (B, N, W), in the grid's dtype: yields (plane, scenes, energies (G, chunk, W)).

    One 2-D matmul per plane and scene chunk, (G, N) @ (N, chunk W): a batched matmul would
    broadcast the grid to (chunk, G, N) first. Chunks keep the intermediate near 64 MB.
    """
    planes, gp, gt = grid.shape
    b, n, width = right.shape
    right = right.to(grid.steering.dtype)
    chunk = max(1, _CHUNK_ENTRIES // (gp * gt * max(width, 1)))
    for p in range(planes):
        steer = grid.steering[p].reshape(gp * gt, n)  # (G, N)
        for lo in range(0, b, chunk):
            part = right[lo:lo + chunk]
            c = part.shape[0]
            prod = (steer @ part.permute(1, 0, 2).reshape(n, c * width)).view(gp * gt, c, width)
            yield p, slice(lo, lo + c), prod.real.square() + prod.imag.square()


def clear_grid_cache() -> None:
    """Drop every cached grid (they hold up to a few hundred MB for the paper preset)."""
    _cached_grid.cache_clear()


__all__ = ["DEFAULT_STEP_DEG", "SearchGrid", "clear_grid_cache", "range_planes", "search_grid",
           "steering_energies"]

"""The RIS -> BS channel H (M x N): a Rician mix of one line-of-sight path and scattering.

H = sqrt(k/(1+k)) a_BS(psi) a_RIS(psi')^T + sqrt(1/(1+k)) G, G iid CN(0, 1).
Both steering vectors have unit-modulus entries, so the LoS and scattered parts have unit
power per entry and E|H_mn|^2 = 1 for every kappa: kappa changes the channel's structure,
not the received power.
"""

from __future__ import annotations

import math

import torch

from ris_model.config import SystemConfig
from ris_model.physics.geometry import system_positions, wavenumber
from ris_model.physics.steering import ris_steering, ula_steering

# LoS directions when docs/physics.md leaves them open: the BS sees the RIS within +-60 deg of
# its broadside; the RIS sees the BS within +-60 deg azimuth and +-30 deg elevation.
BS_ANGLE_MAX = math.radians(60.0)
RIS_LOS_AZIMUTH_MAX = math.radians(60.0)
RIS_LOS_ELEVATION_MAX = math.radians(30.0)


def _uniform(n: int, half_width: float, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return (2 * u - 1) * half_width


def rician_channel(system: SystemConfig, n: int, *, generator: torch.Generator) -> torch.Tensor:
    """``n`` independent channels, (n, M, N) complex128, on the generator's device."""
    kappa = system.rician_k
    if kappa < 0:
        raise ValueError(f"the Rician factor must be >= 0 but got {system.rician_k=}")
    m, elements = system.bs_antennas, system.n_elements
    psi_bs = _uniform(n, BS_ANGLE_MAX, generator)  # (n,)
    los_az = _uniform(n, RIS_LOS_AZIMUTH_MAX, generator)
    los_el = _uniform(n, RIS_LOS_ELEVATION_MAX, generator)
    g = torch.randn(n, m, elements, generator=generator, device=generator.device,
                    dtype=torch.complex128)  # CN(0, 1): real and imaginary parts of variance 1/2
    a_bs = ula_steering(psi_bs, m)  # (n, M), unit modulus
    positions = system_positions(system, device=generator.device)
    a_ris = ris_steering(los_az, los_el, None, positions, wavenumber(system)) * math.sqrt(elements)  # (n, N)
    los = a_bs.unsqueeze(-1) * a_ris.unsqueeze(-2)  # (n, M, N)
    return math.sqrt(kappa / (1 + kappa)) * los + math.sqrt(1 / (1 + kappa)) * g

"""Where the sources are: counts, directions, ranges and powers of a batch of scenes.

Labels are padded to K_max so a batch is one tensor per quantity; the first k slots of a
scene are its sources and ``mask`` marks them. Padded slots hold 0 in every quantity.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ris_model.config import SystemConfig
from ris_model.physics.geometry import angular_distance

# Rounds of re-drawing the slots that sit too close to an earlier source. At the default
# 5 deg in a 120 x 60 deg box a slot collides with probability ~1% per other source, so
# a handful of rounds suffice; hitting the bound means the box is (nearly) too crowded.
MAX_SEPARATION_ROUNDS = 200


class SceneSamplingError(RuntimeError):
    """The configured sources cannot be placed; the message says which setting to change."""


@dataclass(frozen=True, eq=False)
class Sources:
    """Per-scene source labels, each (B, K_max) float64 except ``mask`` (bool) and ``k`` (B,)."""

    phi: torch.Tensor  # azimuth, radians
    theta: torch.Tensor  # elevation, radians
    r: torch.Tensor  # range, metres; inf in the far field
    power: torch.Tensor  # linear source power
    mask: torch.Tensor  # True on the first k slots
    k: torch.Tensor  # (B,) long, number of sources

    def to(self, device: torch.device | str) -> Sources:
        return Sources(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


def sample_counts(system: SystemConfig, n: int, *, generator: torch.Generator,
                  k: int | None = None) -> torch.Tensor:
    """K per scene, uniform in [k_min, k_max] unless fixed by ``k``; (n,) long."""
    if k is not None:
        if not 1 <= k <= system.k_max:
            raise ValueError(f"k must be in 1..system.k_max={system.k_max} but got {k=}")
        return torch.full((n,), k, dtype=torch.long, device=generator.device)
    return torch.randint(system.k_min, system.k_max + 1, (n,), generator=generator, device=generator.device)


def _uniform(shape: tuple[int, ...], half_width: float, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
    return (2 * u - 1) * half_width


def _too_close(phi: torch.Tensor, theta: torch.Tensor, mask: torch.Tensor, min_sep: float) -> torch.Tensor:
    """(B, K) True where an active slot is within ``min_sep`` of an earlier active slot."""
    dist = angular_distance(phi.unsqueeze(-1), theta.unsqueeze(-1),
                            phi.unsqueeze(-2), theta.unsqueeze(-2))  # (B, K, K): [j, i]
    k_max = phi.shape[-1]
    earlier = torch.ones(k_max, k_max, dtype=torch.bool, device=phi.device).tril(-1)  # i < j
    pair_active = mask.unsqueeze(-1) & mask.unsqueeze(-2)
    return ((dist < min_sep) & earlier & pair_active).any(dim=-1)


def sample_directions(system: SystemConfig, mask: torch.Tensor, *, generator: torch.Generator,
                      max_rounds: int = MAX_SEPARATION_ROUNDS) -> tuple[torch.Tensor, torch.Tensor]:
    """(phi, theta), each (B, K_max) radians, uniform in the box and pairwise >= min separation.

    Vectorised rejection: every round re-draws only the slots that sit too close to an
    earlier source of their scene, so the first source of a scene is never re-drawn and
    the loop ends once every scene is valid.
    """
    phi_max, theta_max = system.angle_bounds_rad()
    min_sep = math.radians(system.min_separation_deg)
    shape = tuple(mask.shape)
    phi = _uniform(shape, phi_max, generator)
    theta = _uniform(shape, theta_max, generator)
    if min_sep <= 0 or shape[-1] < 2:
        return phi, theta
    for _ in range(max_rounds):
        bad = _too_close(phi, theta, mask, min_sep)
        if not bad.any():
            return phi, theta
        phi = torch.where(bad, _uniform(shape, phi_max, generator), phi)
        theta = torch.where(bad, _uniform(shape, theta_max, generator), theta)
    if not _too_close(phi, theta, mask, min_sep).any():
        return phi, theta
    raise SceneSamplingError(
        f"could not place {int(mask.sum(-1).max())} sources {system.min_separation_deg} deg apart in "
        f"phi +-{system.phi_max_deg} deg x theta +-{system.theta_max_deg} deg within {max_rounds} rounds; "
        f"lower system.min_separation_deg or system.k_max, or widen the angle box")


def sample_sources(system: SystemConfig, n: int, *, generator: torch.Generator,
                   k: int | None = None) -> Sources:
    """Labels of ``n`` scenes drawn on the generator's device, padded to ``system.k_max``."""
    if n < 1:
        raise ValueError(f"the number of scenes must be >= 1 but got {n=}")
    counts = sample_counts(system, n, generator=generator, k=k)  # (B,)
    slots = torch.arange(system.k_max, device=generator.device)
    mask = slots < counts.unsqueeze(-1)  # (B, K_max)
    phi, theta = sample_directions(system, mask, generator=generator)
    zero = torch.zeros((), dtype=torch.float64, device=generator.device)
    if system.near_field:
        u = torch.rand(mask.shape, generator=generator, device=generator.device, dtype=torch.float64)
        r = system.r_min + (system.r_max - system.r_min) * u
    else:
        r = torch.full(mask.shape, math.inf, dtype=torch.float64, device=generator.device)
    u = torch.rand(mask.shape, generator=generator, device=generator.device, dtype=torch.float64)
    power = system.power_min + (system.power_max - system.power_min) * u
    return Sources(phi=torch.where(mask, phi, zero), theta=torch.where(mask, theta, zero),
                   r=torch.where(mask, r, zero), power=torch.where(mask, power, zero),
                   mask=mask, k=counts)

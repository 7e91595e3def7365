"""Local maximum-likelihood refinement of located sources on the BS snapshots.

A MUSIC peak on an estimated covariance is only as precise as that covariance, and every
covariance estimated from L snapshots through M < N measurements is noisy. The snapshots
themselves say more: each y_l ~ CN(0, C_l) with C_l = Phi_l A diag(p) A^H Phi_l^H + s^2 I,
so the source parameters can be fitted to them directly (the stochastic maximum-likelihood
estimator, which approaches the CRB). That likelihood has many local optima, so the fit
here is local: it refines estimates that already sit in the right basin and never finds
a source by itself (the global moves of :mod:`.relocate` do that, one source at a time).
With three or four parameters per source instead of the N^2 of an unstructured
covariance it cannot fit the snapshot noise the way R_ls does.

The fit runs per scene in parallel: Adam on (phi, theta[, rho = 1/r], log p), whose
per-parameter step normalisation makes one learning rate fit every scene, for a fixed
number of steps; each scene keeps the iterate with its lowest negative log-likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ris_model.config import SystemConfig
from ris_model.estimators.search import Estimates
from ris_model.physics.simulate import SceneBatch, steering_matrix


@dataclass(frozen=True)
class SourceFit:
    """Refined sources per scene (padded like :class:`Estimates`) and their powers and NLL."""

    estimates: Estimates
    power: torch.Tensor  # (B, K) at the snapshots' scale; 0 on padded slots
    nll: torch.Tensor  # (B,) negative log-likelihood of the snapshots, up to a constant


class SnapshotLikelihood:
    """The snapshots of a batch of scenes, ready to score source hypotheses by their NLL.

    Per scene and snapshot the covariance is C_l = G_l G_l^H + s^2 I with
    G_l = H diag(c_l) A^T diag(sqrt p). The NLL sum_l log det C_l + y_l^H C_l^-1 y_l is
    taken through the K x K matrix T_l = I + G_l^H G_l / s^2 (Woodbury and the determinant
    lemma): K <= K_max is below M, so the cost is a batch of tiny Cholesky factorisations.

    All G_l of a scene come from one product H @ [c_l * x_k]_{l,k}: the same arithmetic
    as applying each Phi_l = H diag(c_l), without reading L copies of an M x N matrix.
    """

    def __init__(self, y: torch.Tensor, codes: torch.Tensor, H: torch.Tensor, noise_var: torch.Tensor) -> None:
        dtype = torch.promote_types(torch.promote_types(y.dtype, codes.dtype), H.dtype)
        y, codes, H = y.to(dtype), codes.to(dtype), H.to(dtype)
        self.y = y  # (B, L, M)
        self.codes = codes.transpose(-1, -2).unsqueeze(-1)  # (B, N, L, 1)
        self.H = H  # (B, M, N)
        self.y_energy = y.abs().square().sum(-1)  # (B, L)
        self.noise_var = noise_var.to(y.real.dtype)[:, None]  # (B, 1)

    @classmethod
    def of(cls, scenes: SceneBatch, device: torch.device | str) -> SnapshotLikelihood:
        """The likelihood of ``scenes``' snapshots on ``device``, in complex128: the fits'
        steps are fractions of a degree, finer than complex64's phases resolve."""
        return cls(scenes.y.to(device, torch.complex128), scenes.codes.to(device, torch.complex128),
                   scenes.H.to(device, torch.complex128), scenes.noise_var.to(device, torch.float64))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Phi_l x_k for every snapshot l and column k of x (B, N, K): (B, L, M, K)."""
        b, l, m = self.y.shape
        k = x.shape[-1]
        z = (self.codes * x.to(self.H.dtype).unsqueeze(-2)).reshape(b, -1, l * k)  # (B, N, L K)
        return (self.H @ z).view(b, m, l, k).transpose(1, 2)

    def __call__(self, A: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
        """NLL per scene, (B,), for steering rows A (B, K, N) (zero on padded slots) and powers (B, K)."""
        m = self.y.shape[-1]
        k = A.shape[1]
        g = self.images(A.transpose(-1, -2) * power.clamp_min(torch.finfo(power.dtype).tiny).sqrt().unsqueeze(-2))
        s2 = self.noise_var
        eye = torch.eye(k, dtype=g.dtype, device=g.device)
        chol = torch.linalg.cholesky(eye + (g.mH @ g) / s2[..., None, None])  # (B, L, K, K)
        w = torch.linalg.solve_triangular(chol, g.mH @ self.y.unsqueeze(-1), upper=False).squeeze(-1)  # (B, L, K)
        logdet = m * torch.log(s2) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1).real).sum(-1)
        quad = (self.y_energy - w.abs().square().sum(-1) / s2) / s2  # (B, L)
        return (logdet + quad).sum(-1)


def snapshot_nll(y: torch.Tensor, codes: torch.Tensor, H: torch.Tensor, noise_var: torch.Tensor,
                 A: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
    """Per-scene sum over snapshots of log det C_l + y_l^H C_l^-1 y_l, (B,); see :class:`SnapshotLikelihood`.

    y (B, L, M), codes (B, L, N), H (B, M, N), noise_var (B,), A (B, K, N), power (B, K).
    """
    return SnapshotLikelihood(y, codes, H, noise_var)(A, power)


def _initial_power(likelihood: SnapshotLikelihood, A: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Equal shares of the received signal power, each scaled by its source's mean gain."""
    y, noise_var = likelihood.y, likelihood.noise_var[:, 0]
    m = y.shape[-1]
    # floored at -10 dB: at low SNR the estimate can be <= 0, and a start at ~0 power
    # would need more steps than the fit has to climb back (Adam moves log p ~0.05 a step)
    signal = torch.maximum(likelihood.y_energy.mean(-1) - m * noise_var, 0.1 * m * noise_var)
    gain = likelihood.images(A.transpose(-1, -2)).abs().square().sum(-2).mean(1)  # (B, K)
    share = signal[:, None] / mask.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(mask, share / gain.clamp_min(1e-12), torch.zeros_like(gain))


class _Region:
    """Where a fitted source may go: the search box, and within ``radius`` of where it started.

    The box keeps every fitted source one that MUSIC can return (the grid search and its
    refinement are confined to it); the radius is what makes the fit a local one.
    """

    def __init__(self, system: SystemConfig, phi0: torch.Tensor, theta0: torch.Tensor, radius: float) -> None:
        self.phi_max, self.theta_max = system.angle_bounds_rad()
        self.rho_lo, self.rho_hi = (1.0 / system.r_max, 1.0 / system.r_min) if system.near_field else (0.0, 0.0)
        # the anchors themselves inside the box, so the disc around each one meets it
        self.phi0 = phi0.clamp(-self.phi_max, self.phi_max)
        self.theta0 = theta0.clamp(-self.theta_max, self.theta_max)
        self.radius = radius

    @torch.no_grad()
    def project(self, phi: torch.Tensor, theta: torch.Tensor, rho: torch.Tensor | None) -> None:
        dphi, dtheta = phi - self.phi0, theta - self.theta0
        scale = (self.radius / torch.hypot(dphi, dtheta).clamp_min(1e-300)).clamp_max(1.0)
        phi.copy_((self.phi0 + dphi * scale).clamp(-self.phi_max, self.phi_max))
        theta.copy_((self.theta0 + dtheta * scale).clamp(-self.theta_max, self.theta_max))
        if rho is not None:
            rho.clamp_(self.rho_lo, self.rho_hi)


@torch.enable_grad()
def refine_sources(estimates: Estimates, scenes: SceneBatch, system: SystemConfig, *, steps: int = 150,
                   step_deg: float = 0.2, radius_deg: float = 10.0) -> SourceFit:
    """Fit each scene's estimated sources to its snapshots by local maximum likelihood.

    ``step_deg`` is the angles' learning rate (an Adam step moves a parameter by about its
    learning rate). After every step each source is put back within ``radius_deg`` of
    its start (in (phi, theta); a start outside the search box is first clamped into it)
    and inside the search box: the fit polishes what it is
    given and cannot wander into another source's basin. K per scene is ``estimates.mask``'s.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0 but got {steps=}")
    if not radius_deg > 0:
        raise ValueError(f"radius_deg must be > 0 but got {radius_deg=}")
    if len(estimates) != len(scenes):
        raise ValueError(f"{len(estimates)} scenes of estimates but {len(scenes)} scenes of snapshots")
    dev = estimates.phi.device
    likelihood = SnapshotLikelihood.of(scenes, dev)
    mask = estimates.mask
    near = system.near_field
    phi = estimates.phi.detach().double().clone().requires_grad_(True)
    theta = estimates.theta.detach().double().clone().requires_grad_(True)
    rho = (1.0 / estimates.r.detach().double()).clone().requires_grad_(True) if near else None
    region = _Region(system, phi.detach().clone(), theta.detach().clone(), math.radians(radius_deg))
    region.project(phi, theta, rho)  # padded slots (r = 0 -> rho = inf) come back finite

    def steering() -> torch.Tensor:
        return steering_matrix(system, phi, theta, 1.0 / rho if rho is not None else None, mask)

    with torch.no_grad():
        log_power = _initial_power(likelihood, steering(), mask).clamp_min(1e-30).log()
    log_power.requires_grad_(True)
    groups = [{"params": [phi, theta], "lr": math.radians(step_deg)}, {"params": [log_power], "lr": 0.05}]
    if rho is not None:
        groups.append({"params": [rho], "lr": 0.01})
    opt = torch.optim.Adam(groups)

    def snapshot() -> list[torch.Tensor]:
        return [t.detach().clone() for t in (phi, theta, log_power, *([rho] if rho is not None else []))]

    best = snapshot()
    best_nll = torch.full((len(mask),), math.inf, dtype=torch.float64, device=dev)
    for step in range(steps + 1):
        nll = likelihood(steering(), log_power.exp() * mask)
        with torch.no_grad():
            better = nll < best_nll
            best_nll = torch.where(better, nll, best_nll)
            best = [torch.where(better.view(-1, *[1] * (b.ndim - 1)), now, b) for now, b in zip(snapshot(), best)]
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        nll.sum().backward()
        opt.step()
        region.project(phi, theta, rho)
    phi_b, theta_b, log_power_b = best[:3]
    r_b = 1.0 / best[3] if near else estimates.r.double()
    zero = torch.zeros_like(phi_b)
    refined = Estimates(phi=torch.where(mask, phi_b, zero).to(estimates.phi.dtype),
                        theta=torch.where(mask, theta_b, zero).to(estimates.theta.dtype),
                        r=torch.where(mask, r_b, estimates.r.double()).to(estimates.r.dtype),
                        mask=mask, k=estimates.k, score=estimates.score)
    return SourceFit(refined, torch.where(mask, log_power_b.exp(), zero), best_nll)


def fitted_covariance(fit: SourceFit, system: SystemConfig) -> torch.Tensor:
    """R = A diag(p) A^H of the fitted sources, trace N, (B, N, N) complex128."""
    est = fit.estimates
    A = steering_matrix(system, est.phi.double(), est.theta.double(),
                        est.r.double() if system.near_field else None, est.mask)
    R = A.transpose(-1, -2) @ (fit.power.to(A.real.dtype).unsqueeze(-1) * A.conj())
    tr = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1).clamp_min(1e-300)
    return R * (system.n_elements / tr)[:, None, None]


__all__ = ["SnapshotLikelihood", "SourceFit", "fitted_covariance", "refine_sources", "snapshot_nll"]

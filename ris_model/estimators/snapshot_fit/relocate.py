"""Global moves for the local snapshot fit: put the least useful source where the data want one.

The local fit (:mod:`.likelihood`) polishes sources inside their basins. It cannot repair
the typical gross error: two sources within a beamwidth merge into one MUSIC peak, and the
last estimate lands on a sidelobe. The likelihood sees what is wrong. With every other
source held, adding one source at a point g with its best power lowers the NLL by
L (t - 1 - log t) when t > 1, where

    t(g) = sum_l |b_l^H C_l^-1 y_l|^2 / sum_l b_l^H C_l^-1 b_l,    b_l = Phi_l a(g)

(exact when b_l^H C_l^-1 b_l is the same for every snapshot; with random RIS codes it
is off by up to a factor of about three either way, which is fine for ranking points and
for deciding which moves deserve a refit, and the refit's exact NLL decides). Both sums
are quadratic forms a(g)^H X a(g) with an N x N matrix X per scene, so scoring a whole
search grid costs two (G x N)(N x N) products, whatever L is.

A round drops from each scene the source whose removal costs the least NLL, scores the
grid without it and, where the best point promises more than that source was worth, moves
the source there and refits the scene locally. The refit is kept only if its NLL is lower,
so no round makes a scene's fit worse; a scene whose move was refused is not proposed
again, since the same fit would propose the same move. The scheme is akin to the
alternating-projection search of deterministic ML direction finding, here on the
stochastic likelihood and one source at a time.
"""

from __future__ import annotations

import math

import torch

from ris_model.config import SystemConfig
from ris_model.estimators.grid import SearchGrid, search_grid
from ris_model.estimators.search import Estimates
from ris_model.estimators.snapshot_fit.likelihood import SnapshotLikelihood, SourceFit, refine_sources
from ris_model.physics.simulate import SceneBatch, steering_matrix

# The scoring grid's step: about a sixth of the 8 x 8 aperture's half-power beamwidth; the refit does the rest.
SCORE_STEP_DEG = 2.0
# Scene-chunk budget of the grid products, in complex entries of a (G, chunk, N) intermediate.
_CHUNK_ENTRIES = 1 << 22


def relocate_sources(fit: SourceFit, scenes: SceneBatch, system: SystemConfig, *, rounds: int = 2,
                     steps: int = 150, radius_deg: float = 10.0,
                     step_deg: float = SCORE_STEP_DEG) -> SourceFit:
    """Up to ``rounds`` global moves of one source per scene, each followed by the local refit
    (``steps``, ``radius_deg`` as in :func:`~.likelihood.refine_sources`) and kept only where it
    lowers the scene's NLL. Scenes the moves cannot improve keep ``fit`` exactly."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0 but got {rounds=}")
    if len(fit.estimates) != len(scenes):
        raise ValueError(f"{len(fit.estimates)} scenes of estimates but {len(scenes)} scenes of snapshots")
    dev = fit.estimates.phi.device
    grid = search_grid(system, step_deg=step_deg, device=dev)
    open_ = torch.ones(len(scenes), dtype=torch.bool, device=dev)  # scenes whose fit may still move
    for _ in range(rounds):
        idx = open_.nonzero().squeeze(-1)
        if idx.numel() == 0:
            break
        part = scenes.index(idx.to(scenes.y.device))
        likelihood = SnapshotLikelihood.of(part, dev)
        mine = SourceFit(fit.estimates.index(idx), fit.power[idx], fit.nll[idx])
        moved, promising = propose_moves(mine, likelihood, system, grid, math.radians(radius_deg))
        take = promising.nonzero().squeeze(-1)
        if take.numel() == 0:
            break
        refit = refine_sources(moved.index(take), part.index(take.to(part.y.device)), system,
                               steps=steps, radius_deg=radius_deg)
        fit, changed = keep_better(fit, refit, idx[take])
        open_ = torch.zeros_like(open_).index_fill_(0, changed, True)
    return fit


@torch.no_grad()
def propose_moves(fit: SourceFit, likelihood: SnapshotLikelihood, system: SystemConfig,
                  grid: SearchGrid, radius: float) -> tuple[Estimates, torch.Tensor]:
    """Per scene, the fit with its least useful source moved to the best grid point more
    than ``radius`` (radians) from where it is, and whether that move promises a lower
    NLL, (B,) bool."""
    est = fit.estimates
    rows = torch.arange(len(est), device=est.phi.device)
    A = steering_matrix(system, est.phi.double(), est.theta.double(),
                        est.r.double() if system.near_field else None, est.mask)
    cost = drop_costs(likelihood, A, fit.power, est.mask, fit.nll)
    slot = cost.argmin(-1)  # (B,)
    kept = fit.power.double().clone()
    kept[rows, slot] = 0.0
    Z, W = residual_forms(likelihood, A, kept)
    point, gain = best_addition(Z, W, grid, likelihood.y.shape[1],
                                away_from=(est.phi[rows, slot], est.theta[rows, slot]), radius=radius)
    promising = est.mask.any(-1) & (gain > cost[rows, slot])
    planes, n_phi, n_theta = grid.shape
    plane, rest = point // (n_phi * n_theta), point % (n_phi * n_theta)

    def place(values: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        out = values.clone()
        out[rows, slot] = new.to(values.dtype)
        return out

    r_new = 1.0 / grid.rho[plane] if system.near_field else torch.full_like(grid.rho[plane], math.inf)
    moved = Estimates(phi=place(est.phi, grid.phi[rest // n_theta]), theta=place(est.theta, grid.theta[rest % n_theta]),
                      r=place(est.r, r_new), mask=est.mask, k=est.k, score=est.score)
    return moved, promising


@torch.no_grad()
def drop_costs(likelihood: SnapshotLikelihood, A: torch.Tensor, power: torch.Tensor, mask: torch.Tensor,
               nll: torch.Tensor) -> torch.Tensor:
    """How much each source lowers its scene's NLL, (B, K): the NLL without it minus ``nll``;
    inf on padded slots, so they are never the one to move."""
    costs = []
    for k in range(A.shape[1]):
        without = power.double().clone()
        without[:, k] = 0.0
        costs.append(likelihood(A, without) - nll)
    cost = torch.stack(costs, -1)
    return torch.where(mask, cost, torch.full_like(cost, math.inf))


@torch.no_grad()
def residual_forms(likelihood: SnapshotLikelihood, A: torch.Tensor, power: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Z = sum_l z_l z_l^H and W = sum_l D_l^H H^H C_l^-1 H D_l, (B, N, N) each, with
    z_l = D_l^H H^H C_l^-1 y_l, D_l = diag(c_l) and C_l the covariance of the sources
    (A, power) plus noise: a(g)^H Z a(g) and a(g)^H W a(g) are t(g)'s two sums."""
    g = likelihood.images(A.transpose(-1, -2) * power.clamp_min(0.0).sqrt().unsqueeze(-2))  # (B, L, M, K)
    m = g.shape[-2]
    eye = torch.eye(m, dtype=g.dtype, device=g.device)
    chol = torch.linalg.cholesky(g @ g.mH + likelihood.noise_var[..., None, None] * eye)  # (B, L, M, M)
    codes = likelihood.codes.squeeze(-1).transpose(1, 2).unsqueeze(-2)  # (B, L, 1, N)
    whitened = torch.linalg.solve_triangular(chol, likelihood.H.unsqueeze(1), upper=False) * codes  # (B, L, M, N)
    w = torch.linalg.solve_triangular(chol, likelihood.y.unsqueeze(-1), upper=False)  # (B, L, M, 1)
    z = (whitened.mH @ w).squeeze(-1)  # (B, L, N)
    stacked = whitened.flatten(1, 2)  # (B, L M, N)
    return z.mT @ z.conj(), stacked.mH @ stacked


@torch.no_grad()
def best_addition(Z: torch.Tensor, W: torch.Tensor, grid: SearchGrid, snapshots: int,
                  away_from: tuple[torch.Tensor, torch.Tensor] | None = None, radius: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat grid index (B,) where one more source would lower the NLL most, and that
    (approximate) gain, L (t - 1 - log t) for t > 1, else 0.

    ``away_from`` = (phi, theta), (B,) each: only grid points more than ``radius`` from it
    (in (phi, theta), as the local fit measures) compete; nearer ones the local fit reaches
    by itself."""
    steering = grid.steering.reshape(-1, grid.steering.shape[-1])  # (G, N)
    g, n = steering.shape
    chunk = max(1, _CHUNK_ENTRIES // (g * n))
    conj = steering.conj().resolve_conj()
    # One buffer for every chunk's (G, chunk N) product: a fresh tens-of-MB block per chunk
    # fragments the allocator, and the process kept ~1 GB per 100 small scenes.
    buffer = torch.empty(g * chunk * n, dtype=steering.dtype, device=steering.device)

    def form(X: torch.Tensor) -> torch.Tensor:  # a_g^H X a_g for every scene of X, (c, G)
        c = X.shape[0]
        right = X.to(steering.dtype).permute(1, 0, 2).reshape(n, c * n)  # one 2-D product for the chunk
        prod = torch.matmul(conj, right, out=buffer[:g * c * n].view(g, c * n))
        return prod.view(g, c, n).mul_(steering.unsqueeze(1)).sum(-1).real.T

    planes = grid.shape[0]
    if away_from is None:
        allowed = torch.ones((Z.shape[0], 1), dtype=torch.bool, device=Z.device)
    else:
        pp, tt = torch.meshgrid(grid.phi, grid.theta, indexing="ij")
        dist = torch.hypot(pp.reshape(1, -1) - away_from[0].double()[:, None],
                           tt.reshape(1, -1) - away_from[1].double()[:, None])  # (B, G_phi G_theta)
        allowed = (dist > radius).repeat(1, planes)  # flat index = (plane, phi, theta)
    tiny = torch.finfo(steering.real.dtype).tiny
    best = [torch.where(ok, form(z) / form(w).clamp_min(tiny), torch.zeros((), dtype=steering.real.dtype)).max(-1)
            for z, w, ok in zip(Z.split(chunk), W.split(chunk), allowed.split(chunk))]
    best_t = torch.cat([t for t, _ in best]).double()
    point = torch.cat([i for _, i in best])
    gain = snapshots * (best_t - 1.0 - best_t.clamp_min(1e-300).log())
    return point, torch.where(best_t > 1.0, gain, torch.zeros_like(gain))


def keep_better(fit: SourceFit, refit: SourceFit, idx: torch.Tensor) -> tuple[SourceFit, torch.Tensor]:
    """``fit`` with the scenes ``idx`` replaced by ``refit``'s where its NLL is lower, and
    the scenes so replaced."""
    better = refit.nll < fit.nll[idx]
    take = idx[better]
    src = better.nonzero().squeeze(-1)
    old, new = fit.estimates, refit.estimates

    def put(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
        out = mine.clone()
        out[take] = theirs[src].to(mine.dtype)
        return out

    estimates = Estimates(phi=put(old.phi, new.phi), theta=put(old.theta, new.theta), r=put(old.r, new.r),
                          mask=old.mask, k=old.k, score=old.score)
    return SourceFit(estimates, put(fit.power, refit.power), put(fit.nll, refit.nll)), take


__all__ = ["SCORE_STEP_DEG", "best_addition", "drop_costs", "keep_better", "propose_moves", "relocate_sources",
           "residual_forms"]

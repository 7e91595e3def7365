"""Source localisation on a covariance: coarse grid, peak picking, off-grid refinement.

1. Evaluate the MUSIC or MVDR spectrum on the cached grid (:mod:`.grid`), one range
   plane at a time, keeping per (phi, theta) the best plane: a 2-D map whose local
   maxima are the candidate directions. Sources are at least ``min_separation_deg``
   apart in angle, so one 2-D maximum per source suffices even in the near field.
2. Take the 2K + 2 strongest local maxima with non-maximum suppression (if a scene has
   fewer, its strongest other points fill in, still suppressed).
3. Refine each candidate off the grid (:mod:`.refine`), in complex128, to far below the
   grid step, and keep the K strongest distinct refined peaks.
4. MUSIC only: fit those K together to the signal subspace (:mod:`.subspace_fit`), so
   two sources that share one valley are not reported as one valley and one ripple.

K is the oracle count (an int or a (B,) tensor) or, when None, estimated by MDL or an
eigenvalue threshold (:mod:`.order`). Everything is batched over scenes and follows the
device of R.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as nnf

from ris_model.config import SystemConfig
from ris_model.estimators.grid import DEFAULT_STEP_DEG, SearchGrid, search_grid, steering_energies
from ris_model.estimators.order import estimate_order
from ris_model.estimators.refine import PeakResidual, peak_objective, refine_peaks
from ris_model.estimators.spectra import NULL_FLOOR, mvdr_whitener, signal_basis_eigh, signal_basis_qr
from ris_model.estimators.subspace_fit import fit_subspace
from ris_model.physics.geometry import system_positions, unit_direction, wavenumber

# MVDR's default grid step: its grid stage is O(G N^2) against MUSIC's O(G N K).
MVDR_STEP_DEG = 2.0
# Candidates per scene that peak picking considers (local maxima first).
_CANDIDATES = 256


@dataclass(frozen=True, eq=False)
class Estimates:
    """Estimated sources per scene, padded to the largest K of the batch.

    ``r`` is inf for a far-field system; padded slots hold 0 everywhere (as in the
    labels of :class:`~ris_model.physics.SceneBatch`). ``score`` is -log of the refined
    objective ||W a||^2 (higher = stronger peak); ``k`` is the number of estimates used.
    """

    phi: torch.Tensor  # (B, K) radians
    theta: torch.Tensor  # (B, K) radians
    r: torch.Tensor  # (B, K) metres
    mask: torch.Tensor  # (B, K) bool
    k: torch.Tensor  # (B,) long
    score: torch.Tensor  # (B, K)

    def __len__(self) -> int:
        return self.phi.shape[0]

    def index(self, idx: slice | torch.Tensor) -> Estimates:
        """The estimates of some scenes."""
        return Estimates(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> Estimates:
        """The same estimates on ``device``."""
        return Estimates(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    @classmethod
    def cat(cls, parts: list[Estimates]) -> Estimates:
        """Concatenate along scenes, padding every part to the widest K."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of Estimates")
        width = max(p.phi.shape[1] for p in parts)

        def pad(t: torch.Tensor) -> torch.Tensor:
            return nnf.pad(t, (0, width - t.shape[1])) if t.shape[1] < width else t

        return cls(phi=torch.cat([pad(p.phi) for p in parts]), theta=torch.cat([pad(p.theta) for p in parts]),
                   r=torch.cat([pad(p.r) for p in parts]), mask=torch.cat([pad(p.mask) for p in parts]),
                   k=torch.cat([p.k for p in parts]), score=torch.cat([pad(p.score) for p in parts]))


def _resolve_k(k: int | torch.Tensor | None, R: torch.Tensor, system: SystemConfig,
               order: str, threshold: float) -> torch.Tensor:
    b = R.shape[0]
    if k is None:
        return estimate_order(R, system.snapshots, method=order,  # type: ignore[arg-type]
                              k_min=1, k_max=system.k_max, threshold=threshold)
    k_t = torch.as_tensor(k, device=R.device, dtype=torch.long)
    if k_t.ndim == 0:
        k_t = k_t.expand(b)
    if k_t.shape != (b,):
        raise ValueError(f"k must be an int, a ({b},) tensor or None but got shape {tuple(k_t.shape)}")
    if bool((k_t < 0).any()) or bool((k_t >= R.shape[-1]).any()):
        raise ValueError(f"k must lie in 0..N-1={R.shape[-1] - 1} but got {k_t.tolist()=}")
    return k_t


def _grid_maps(kind: str, payload: torch.Tensor, mask: torch.Tensor | None, grid: SearchGrid
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best log-spectrum over range planes and its plane index, both (B, G_phi, G_theta).

    MUSIC: payload is the signal basis (B, N, K); value -log ||P_n a||^2 via the
    projector form, O(G N K). MVDR: payload is the whitener W (B, N, N); value
    -log ||W a||^2, O(G N^2).
    """
    _, gp, gt = grid.shape
    b = payload.shape[0]
    real = grid.steering.real.dtype
    maskf = None if mask is None else mask.to(real)
    best = torch.full((b, gp * gt), -math.inf, dtype=real, device=payload.device)
    plane_idx = torch.zeros((b, gp * gt), dtype=torch.long, device=payload.device)
    if kind == "music":
        right = payload.conj()  # |a^H q|^2 = |a^T conj(q)|^2
    else:
        right = payload.mT  # ||W a||^2 = ||a^T W^T||^2
    for p, sl, energy in steering_energies(right, grid):  # energy (G, c, width)
        if kind == "music":
            if maskf is not None:
                energy = energy * maskf[sl]
            value = -(1.0 - energy.sum(-1)).clamp_min(NULL_FLOOR).log()  # ||a||^2 = 1
        else:
            value = -energy.sum(-1).log()
        value = value.T  # (c, G)
        better = value > best[sl]
        best[sl] = torch.where(better, value, best[sl])
        plane_idx[sl] = torch.where(better, torch.full_like(plane_idx[sl], p), plane_idx[sl])
    return best.view(b, gp, gt), plane_idx.view(b, gp, gt)


def _greedy_nms(key: torch.Tensor, u: torch.Tensor, count: int, limit: torch.Tensor, cos_nms: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick up to ``limit`` (B,) of the candidates by decreasing ``key`` (B, C), dropping every
    candidate within the suppression angle of a pick (directions ``u`` (B, C, 3)).

    Returns candidate positions (B, count) and their validity (B, count).
    """
    b = key.shape[0]
    rows = torch.arange(b, device=key.device)
    picks = torch.zeros((b, count), dtype=torch.long, device=key.device)
    valid = torch.zeros((b, count), dtype=torch.bool, device=key.device)
    for j in range(count):
        best = key.argmax(-1)  # (B,)
        ok = torch.isfinite(key[rows, best]) & (j < limit)
        picks[:, j] = best
        valid[:, j] = ok
        near = (u * u[rows, best].unsqueeze(1)).sum(-1) >= cos_nms  # (B, C), includes the pick
        key = torch.where(near & ok.unsqueeze(-1), torch.full_like(key, -math.inf), key)
    return picks, valid


def _grid_candidates(value: torch.Tensor, count: int, grid: SearchGrid, cos_nms: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat grid indices (B, count) of the strongest suppressed local maxima, and validity.

    Local maxima rank above every other point; if a scene has fewer than ``count`` of
    them, its strongest other points (still suppressed) fill in.
    """
    b, gp, gt = value.shape
    value = torch.nan_to_num(value, nan=-math.inf)
    pooled = nnf.max_pool2d(nnf.pad(value.unsqueeze(1), (1, 1, 1, 1), value=-math.inf), 3, stride=1)
    is_max = (value >= pooled.squeeze(1)).reshape(b, -1)
    flat = value.reshape(b, -1)
    finite = torch.where(torch.isfinite(flat), flat, torch.zeros_like(flat))
    span = (finite.amax(-1, keepdim=True) - finite.amin(-1, keepdim=True)) + 1.0
    key = torch.where(is_max, flat + span, flat)
    cand_key, cand_idx = key.topk(min(_CANDIDATES, key.shape[-1]), dim=-1)  # (B, C)
    pp, tt = torch.meshgrid(grid.phi, grid.theta, indexing="ij")
    u = unit_direction(pp.reshape(-1), tt.reshape(-1)).to(value.device)[cand_idx]  # (B, C, 3)
    limit = torch.full((b,), count, device=value.device)
    sel, valid = _greedy_nms(cand_key, u, count, limit, cos_nms)
    return cand_idx.gather(1, sel), valid


def _fit_jointly(x: torch.Tensor, basis: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, system: SystemConfig,
                 grid: SearchGrid, *, iterations: int) -> torch.Tensor:
    """MUSIC's picks x (B, K, 3) refitted together to each scene's signal basis, scenes grouped
    by K; a scene with fewer distinct picks than its K keeps them as they are."""
    x = x.clone()
    count = torch.where(valid.sum(-1) == k, k, torch.zeros_like(k))
    for k in torch.unique(count).tolist():
        if k < 2:
            continue
        scenes = (count == k).nonzero().squeeze(-1)
        fitted, _ = fit_subspace(x[scenes, :k], basis[scenes, :, :k], system, grid, iterations=iterations)
        x[scenes, :k] = fitted.to(x.dtype)
    return x


def _locate(kind: str, grid_payload: torch.Tensor, grid_mask: torch.Tensor | None, residual: PeakResidual,
            k: torch.Tensor, system: SystemConfig, *, refine: bool, step_deg: float,
            nms_deg: float | None, iterations: int, joint: bool = False) -> Estimates:
    """Grid candidates -> refinement -> the k strongest distinct refined peaks -> (MUSIC, ``joint``)
    all k fitted together to the signal subspace (:mod:`.subspace_fit`).

    More candidates than sources are refined (2k + 2): the grid ranks peaks by their value
    at the nearest grid point, which can put a shoulder of a strong peak above a weaker
    source; after refinement the shoulder either lands on the strong peak (a duplicate,
    suppressed) or stays weak, and the ranking is that of the continuous spectrum.
    """
    b = grid_payload.shape[0]
    device = grid_payload.device
    grid = search_grid(system, step_deg=step_deg, device=device)
    k_out = int(k.max()) if b else 0
    n_cand = 2 * k_out + 2 if k_out else 0
    if nms_deg is None:
        nms_deg = max(0.5 * system.min_separation_deg, 1.5 * step_deg)
    cos_nms = math.cos(math.radians(nms_deg))
    value, plane = _grid_maps(kind, grid_payload, grid_mask, grid)
    picks, cand_valid = _grid_candidates(value, n_cand, grid, cos_nms)  # (B, C)
    gt = grid.theta.numel()
    x = torch.stack([grid.phi[picks // gt], grid.theta[picks % gt],
                     grid.rho[plane.reshape(b, -1).gather(1, picks)]], dim=-1)  # (B, C, 3)
    positions = system_positions(system, device=device)
    if refine and x.numel():
        x, f = refine_peaks(x, residual, positions, wavenumber(system), lower=grid.lower(),
                            upper=grid.upper(), near_field=grid.near_field, iterations=iterations)
    else:
        f = peak_objective(x, residual, positions, wavenumber(system))
        x = x.to(f.dtype)
    score = -f.clamp_min(torch.finfo(f.dtype).tiny).log()
    key = torch.where(cand_valid, score, torch.full_like(score, -math.inf))
    sel, valid = _greedy_nms(key, unit_direction(x[..., 0], x[..., 1]), k_out, k, cos_nms)  # (B, K)
    x = x.gather(1, sel.unsqueeze(-1).expand(-1, -1, 3))
    score = score.gather(1, sel)
    if joint and refine and kind == "music" and x.numel():
        x = _fit_jointly(x, grid_payload, valid, k, system, grid, iterations=iterations)
        f = peak_objective(x, residual, positions, wavenumber(system))
        score = -f.clamp_min(torch.finfo(f.dtype).tiny).log()
    zero = torch.zeros((), dtype=x.dtype, device=device)
    r = 1.0 / x[..., 2] if system.near_field else torch.full_like(x[..., 2], math.inf)
    return Estimates(phi=torch.where(valid, x[..., 0], zero), theta=torch.where(valid, x[..., 1], zero),
                     r=torch.where(valid, r, zero), mask=valid, k=valid.sum(-1),
                     score=torch.where(valid, score, zero))


def localize(R: torch.Tensor, system: SystemConfig, k: int | torch.Tensor | None, *,
             method: Literal["music", "mvdr"] = "music", refine: bool = True,
             order: Literal["mdl", "threshold"] = "mdl", threshold: float = 0.05,
             loading: float = 1e-2, step_deg: float | None = None,
             nms_deg: float | None = None, iterations: int = 40,
             music_fit: Literal["joint", "peaks"] = "joint") -> Estimates:
    """Localise the sources of every covariance R (B, N, N) of ``system``.

    k: the number of sources (oracle), an int or (B,) tensor; None estimates it by
    ``order`` ("mdl" on the eigenvalues, or eigenvalues above ``threshold`` x the largest)
    within [1, k_max]. method: MUSIC (signal subspace of R by eigh) or MVDR with diagonal
    ``loading`` relative to tr(R)/N. step_deg: grid step; by default 1 deg for MUSIC and
    2 deg for MVDR, whose grid stage costs O(G N^2) and whose peaks are smooth, about a
    beam wide. nms_deg: suppression radius of peak picking (default half the system's
    minimum source separation). Refinement runs in complex128. music_fit: "joint" refits
    MUSIC's k picks together to the signal subspace, which separates sources that share one
    spectrum valley (:mod:`.subspace_fit`); "peaks" keeps one spectrum minimum per source.
    Both need ``refine``.

    Cost per scene: O(N^3) eigh, the grid stage O(G N K) for MUSIC or O(G N^2) for MVDR
    with G = planes x G_phi x G_theta, and O(iterations K N^2) for refinement.
    """
    if method not in ("music", "mvdr"):
        raise ValueError(f"method must be 'music' or 'mvdr' but got {method=}")
    if music_fit not in ("joint", "peaks"):
        raise ValueError(f"music_fit must be 'joint' or 'peaks' but got {music_fit=}")
    if R.ndim != 3 or R.shape[-1] != R.shape[-2] or R.shape[-1] != system.n_elements:
        raise ValueError(f"R must be (B, N, N) with N={system.n_elements} but got {tuple(R.shape)=}")
    R = R.to(torch.complex128)
    k_t = _resolve_k(k, R, system, order, threshold)
    if step_deg is None:
        step_deg = DEFAULT_STEP_DEG if method == "music" else MVDR_STEP_DEG
    if method == "music":
        basis, mask = signal_basis_eigh(R, k_t)  # (B, N, K), (B, K); masked columns are zero
        return _locate("music", basis, mask, PeakResidual(basis=basis), k_t, system, refine=refine, step_deg=step_deg,
                       nms_deg=nms_deg, iterations=iterations, joint=music_fit == "joint")
    W = mvdr_whitener(R, loading=loading)
    return _locate("mvdr", W, None, PeakResidual(matrix=W), k_t, system, refine=refine, step_deg=step_deg,
                   nms_deg=nms_deg, iterations=iterations)


def localize_factor(F: torch.Tensor, system: SystemConfig, *, refine: bool = True,
                    step_deg: float = DEFAULT_STEP_DEG, nms_deg: float | None = None,
                    iterations: int = 40, music_fit: Literal["joint", "peaks"] = "joint") -> Estimates:
    """MUSIC on the column space of a factor F (B, N, K): K sources per scene, no eigh.

    For a learned low-rank R_hat = F F^H: the subspace comes from QR (as in the loss), so
    what is evaluated is exactly what was trained.
    """
    if F.ndim != 3 or F.shape[1] != system.n_elements:
        raise ValueError(f"F must be (B, N, K) with N={system.n_elements} but got {tuple(F.shape)=}")
    F = F.detach().to(torch.complex128)
    basis = signal_basis_qr(F)
    k_t = torch.full((F.shape[0],), F.shape[-1], dtype=torch.long, device=F.device)
    return _locate("music", basis, None, PeakResidual(basis=basis), k_t, system, refine=refine, step_deg=step_deg,
                   nms_deg=nms_deg, iterations=iterations, joint=music_fit == "joint")


__all__ = ["Estimates", "MVDR_STEP_DEG", "localize", "localize_factor"]

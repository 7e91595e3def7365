"""The Cramer-Rao bound of the actual measurement model: the physical limit of any estimator.

Snapshot l is y_l ~ CN(0, C_l), C_l = Phi_l A diag(p) A^H Phi_l^H + sigma^2 I_M. With the
real parameters eta = (location of every source, p_k, sigma^2), the Slepian-Bangs formula
gives FIM_ij = sum_l tr(C_l^-1 dC_l/deta_i C_l^-1 dC_l/deta_j). The derivatives come from
forward-mode autograd in complex128, so the bound follows whatever steering model is
plugged in (exact spherical wave, far field, a plain ULA) without hand-derived gradients.
Powers and noise are nuisance parameters: the bound on a location accounts for not
knowing them.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ris_model.config import SystemConfig
from ris_model.physics.geometry import system_positions, wavenumber
from ris_model.physics.simulate import SceneBatch
from ris_model.physics.steering import ris_steering

SteeringFn = Callable[[torch.Tensor], torch.Tensor]  # (B, K, D) locations -> (B, K, N) steering

# Scenes whose covariance derivatives are held at once: (chunk, P, L, M, M) complex128 is
# ~45 MB for the paper preset (P = 21) at 32 scenes.
_CHUNK = 32


@dataclass(frozen=True, eq=False)
class CRBResult:
    """Per-source sqrt(CRB), (B, K_max); NaN on padded slots so an unmasked mean shows up."""

    phi: torch.Tensor  # radians
    theta: torch.Tensor  # radians
    r: torch.Tensor | None  # metres; None in a far-field system (range is not estimated)
    mask: torch.Tensor  # (B, K_max) bool
    fim: torch.Tensor  # (B, P, P) float64: the Fisher information, parameters ordered as in fisher_information()


@functools.cache
def _warm_forward_mode() -> None:
    """The first forward-mode call makes torch script its jvp decompositions, which warns
    about torch.jit.script's deprecation inside torch itself; do it once, quietly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        x = torch.zeros(1, dtype=torch.float64)
        torch.func.jvp(torch.sin, (x,), (x,))


def fisher_information(phi_meas: torch.Tensor, steering_fn: SteeringFn, params: torch.Tensor,
                       power: torch.Tensor, noise_var: torch.Tensor | float, *,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Slepian-Bangs Fisher information of a batch of scenes, (B, P, P) float64.

    phi_meas: (B, L, M, N) measurement matrices Phi_l (or (L, M, N), shared by the batch).
    params: (B, K, D) source locations, fed to ``steering_fn`` -> (B, K, N) steering rows.
    power: (B, K); noise_var: (B,) or a scalar; mask: (B, K) bool, False on padded slots.
    Parameter order: the K*D locations (source-major: k0d0, k0d1, ..., k1d0, ...), then the
    K powers, then sigma^2. Rows and columns of padded slots are 0 (they have no effect).
    """
    _warm_forward_mode()
    params = params.to(torch.float64)
    b, k, d = params.shape
    phi_meas = phi_meas.to(torch.complex128)
    if phi_meas.ndim == 3:
        phi_meas = phi_meas.expand(b, *phi_meas.shape)
    if phi_meas.ndim != 4 or phi_meas.shape[0] != b:
        raise ValueError(f"phi_meas must be (L, M, N) or ({b}, L, M, N) but got {tuple(phi_meas.shape)}")
    power = torch.as_tensor(power, dtype=torch.float64, device=params.device).expand(b, k)
    noise_var = torch.as_tensor(noise_var, dtype=torch.float64, device=params.device).expand(b)
    mask = (torch.ones(b, k, dtype=torch.bool, device=params.device) if mask is None
            else mask.to(device=params.device, dtype=torch.bool))
    if not bool((noise_var > 0).all()):
        raise ValueError(f"the CRB needs a noise variance > 0 in every scene but got min {noise_var.min().item()=}")
    m, n = phi_meas.shape[-2], phi_meas.shape[-1]
    live = mask.to(torch.complex128).unsqueeze(-1)  # (B, K, 1): zero steering on padded slots
    n_loc = k * d
    n_par = n_loc + k + 1
    loc_basis = torch.eye(n_loc, dtype=torch.float64, device=params.device).reshape(n_loc, k, d)

    def gram(v: torch.Tensor, p: torch.Tensor, s2: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return (v * p[:, None, None, :]) @ v.mH + s2[:, None, None, None] * base  # (b, L, M, M)

    eye = torch.eye(m, dtype=torch.complex128, device=params.device)
    fims = []
    for lo in range(0, b, _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        loc, lv, p, s2 = params[sl], live[sl], power[sl].to(torch.complex128), noise_var[sl].to(torch.complex128)
        bc = loc.shape[0]
        pm = phi_meas[sl].flatten(1, 2)  # (b, L*M, N)

        def steer(x: torch.Tensor) -> torch.Tensor:
            return steering_fn(x) * lv  # (b, K, N)  # noqa: B023 (used within this chunk only)

        # Autograd where the model is nonlinear, the steering vectors: one tangent direction
        # for every scene at once (scenes are independent), vmapped over the K*D location
        # directions. Phi is linear, so it is applied to the tangents afterwards.
        a = steer(loc)
        da = torch.func.vmap(lambda t: torch.func.jvp(steer, (loc,), (t.expand_as(loc),))[1])(loc_basis)  # noqa: B023
        v = (pm @ a.mT).unflatten(1, (-1, m))  # (b, L, M, K): Phi_l a_k
        dv = (pm @ da.permute(1, 3, 0, 2).reshape(bc, n, n_loc * k)).unflatten(1, (-1, m))  # (b, L, M, KD*K)

        # Whiten with the Cholesky factor C = G G^H of the true covariance (held fixed):
        # D_i = G^-1 dC_i G^-H is Hermitian and FIM_ij = sum_l tr(C^-1 dC_i C^-1 dC_j)
        # = sum_l <D_i, D_j>_F, one Gram matrix instead of P^2 traces of products.
        chol = torch.linalg.cholesky(gram(v, p, s2, eye))  # (b, L, M, M)
        g_inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
        vw = g_inv @ v  # (b, L, M, K)
        dvw = (g_inv @ dv).unflatten(-1, (n_loc, k))  # (b, L, M, KD, K)
        base = g_inv @ g_inv.mH  # G^-1 I G^-H: the whitened noise term

        # Tangents of (v, p, sigma^2) along each of the P parameters; dC by forward mode.
        tan_v = torch.cat([dvw, dvw.new_zeros(*dvw.shape[:3], k + 1, k)], dim=3)  # (b, L, M, P, K)
        tan_p = torch.cat([p.new_zeros(n_loc, bc, k), torch.eye(k, dtype=p.dtype, device=p.device)
                           .unsqueeze(1).expand(k, bc, k), p.new_zeros(1, bc, k)])  # (P, b, K)
        tan_s2 = torch.cat([s2.new_zeros(n_loc + k, bc), s2.new_ones(1, bc)])  # (P, b)
        d_white = torch.func.vmap(
            lambda tv, tp, ts: torch.func.jvp(lambda x, y, z: gram(x, y, z, base), (vw, p, s2), (tv, tp, ts))[1],  # noqa: B023
            in_dims=(3, 0, 0), out_dims=1)(tan_v, tan_p, tan_s2)  # (b, P, L, M, M)
        d_white = d_white.reshape(bc, n_par, -1)
        fims.append((d_white.conj() @ d_white.mT).real)
    fim = torch.cat(fims)  # (B, P, P)
    return 0.5 * (fim + fim.mT)


def _inverse_diagonal(fim: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
    """diag(FIM^-1), (B, P); inf for scenes whose FIM is singular (an unidentifiable model).

    Parameters flagged ``unused`` (B, P) are decoupled (unit diagonal) first; the FIM is
    scaled to unit diagonal before inversion because angles, metres and powers differ by
    orders of magnitude.
    """
    eye = torch.eye(fim.shape[-1], dtype=fim.dtype, device=fim.device)
    fim = torch.where(unused.unsqueeze(-1) | unused.unsqueeze(-2), eye * unused.unsqueeze(-1), fim)
    scale = fim.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(fim.dtype).tiny).rsqrt()  # (B, P)
    normed = fim * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    inv, info = torch.linalg.inv_ex(normed)
    diag = inv.diagonal(dim1=-2, dim2=-1) * scale.square()
    bad = (info != 0).unsqueeze(-1) | (diag <= 0) | ~torch.isfinite(diag)
    return torch.where(bad, torch.full_like(diag, math.inf), diag)


def crb_from_model(phi_meas: torch.Tensor, steering_fn: SteeringFn, params: torch.Tensor,
                   power: torch.Tensor, noise_var: torch.Tensor | float, *,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """sqrt(CRB) of each source location, (B, K, D) (or (K, D) for unbatched ``params``).

    The model is y_l ~ CN(0, Phi_l A diag(p) A^H Phi_l^H + sigma^2 I) with A's rows from
    ``steering_fn(params)``; powers and sigma^2 are unknown nuisance parameters. A plain
    array with T snapshots is ``phi_meas = eye(N).expand(T, N, N)``. Padded slots (``mask``
    False) are NaN; their ``params`` must still give a finite steering vector.
    """
    unbatched = params.ndim == 2
    if unbatched:
        params, power = params.unsqueeze(0), torch.as_tensor(power).unsqueeze(0)
        noise_var = torch.as_tensor(noise_var).reshape(1)
        mask = None if mask is None else mask.unsqueeze(0)
    b, k, d = params.shape
    mask = torch.ones(b, k, dtype=torch.bool, device=params.device) if mask is None else mask.bool()
    fim = fisher_information(phi_meas, steering_fn, params, power, noise_var, mask=mask)
    out = _location_std(fim, mask, d)
    return out[0] if unbatched else out


def _location_std(fim: torch.Tensor, mask: torch.Tensor, d: int) -> torch.Tensor:
    """sqrt(CRB) of the locations from a fisher_information() FIM, (B, K, D); NaN when padded."""
    b, k = mask.shape
    unused = torch.cat([mask.repeat_interleave(d, dim=-1), mask,
                        torch.ones(b, 1, dtype=torch.bool, device=mask.device)], dim=-1).logical_not()
    var = _inverse_diagonal(fim, unused)[:, :k * d].reshape(b, k, d)
    return torch.where(mask.unsqueeze(-1), var.sqrt(), torch.full_like(var, math.nan))


def system_steering_fn(system: SystemConfig, *, device: torch.device | str | None = None) -> SteeringFn:
    """Locations (B, K, 2) = (phi, theta) in the far field, (B, K, 3) = (phi, theta, r) in the
    near field -> the simulator's steering rows (B, K, N)."""
    positions = system_positions(system, device=device)
    k0 = wavenumber(system)
    if system.near_field:
        return lambda loc: ris_steering(loc[..., 0], loc[..., 1], loc[..., 2], positions, k0)
    return lambda loc: ris_steering(loc[..., 0], loc[..., 1], None, positions, k0)


def crb(system: SystemConfig, batch: SceneBatch) -> CRBResult:
    """Per-source sqrt(CRB) of a batch of scenes, for the inputs the scenes were simulated with."""
    device = batch.y.device
    phi = batch.phi.to(torch.float64)
    theta = batch.theta.to(torch.float64)
    mask = batch.mask
    locs = [phi, theta]
    if system.near_field:
        # Padded slots get a harmless finite range (0 would sit on an element of an odd array).
        r_safe = torch.where(mask, batch.r.to(torch.float64), torch.full_like(phi, 0.5 * (system.r_min + system.r_max)))
        locs.append(r_safe)
    params = torch.stack(locs, dim=-1)  # (B, K, D)
    fim = fisher_information(batch.measurement_matrices(), system_steering_fn(system, device=device),
                             params, batch.power, batch.noise_var, mask=mask)
    std = _location_std(fim, mask, params.shape[-1])  # (B, K, D)
    return CRBResult(phi=std[..., 0], theta=std[..., 1], r=std[..., 2] if system.near_field else None,
                     mask=mask, fim=fim)

"""Classical estimates of the aperture covariance R from the BS snapshots (docs/physics.md).

Every snapshot observes the aperture through its own measurement matrix
Phi_l = H diag(c_l) (M x N, M < N), so no single snapshot sees R. Two estimates:

* ``r_bp``: back-project each snapshot through a Tikhonov pseudo-inverse and average.
  Cheap, biased (the back-projection of Phi_l R Phi_l^H is not R), a network input.
* ``r_ls``: covariance matching, the least-squares fit of Phi_l R Phi_l^H + sigma^2 I to
  the rank-1 sample covariances y_l y_l^H, with a ridge. For this measurement model it
  plays the role that the sample covariance plays for a plain array: the classical
  baseline that learning must beat.

Both are returned Hermitian and normalised to trace N: the target R and the learned
R_hat are trace N too, so every estimate of R is compared and searched on one scale
(MUSIC is scale-free, but MVDR's diagonal loading and every NMSE are not).

Unit-modulus codes make Phi_l Phi_l^H = H H^H for every l, which turns R_bp's L
pseudo-inverses into one. Right-hand sides and the exact solve run in complex128, CG in
the input's precision; the result comes back in the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

# The exact solve forms the N^2 x N^2 normal matrix: N^4 entries (65 k for N = 16,
# 16.8 M for N = 64). Beyond this many unknowns (N^2) conjugate gradients is used.
EXACT_MAX_UNKNOWNS = 1024
# Scenes per chunk of the exact solve, so the (chunk, N^2, N^2) matrices stay small.
_EXACT_CHUNK_ENTRIES = 1 << 24


@dataclass(frozen=True)
class LSInfo:
    """How an ``r_ls`` solve went, per scene: iterations (0 for the exact solve) and the
    final relative residual of the normal equations."""

    iterations: torch.Tensor  # (B,) long
    residual: torch.Tensor  # (B,) float64
    method: str


def _work(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(torch.complex128) if t.is_complex() else t.to(torch.float64) for t in tensors]


def _check_shapes(y: torch.Tensor, codes: torch.Tensor, H: torch.Tensor) -> None:
    if y.ndim != 3 or codes.ndim != 3 or H.ndim != 3:
        raise ValueError(f"expected y (B, L, M), codes (B, L, N), H (B, M, N) but got "
                         f"{tuple(y.shape)=}, {tuple(codes.shape)=}, {tuple(H.shape)=}")
    b, l, m = y.shape
    if codes.shape[:2] != (b, l) or H.shape[:2] != (b, m) or H.shape[2] != codes.shape[2]:
        raise ValueError(f"y (B, L, M), codes (B, L, N) and H (B, M, N) disagree: "
                         f"{tuple(y.shape)=}, {tuple(codes.shape)=}, {tuple(H.shape)=}")


def normalise_trace(R: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Hermitian part of R scaled to trace N, (..., N, N).

    A trace at or below zero (possible for ``r_ls`` at very low SNR: it is not
    constrained to be PSD) is replaced by its magnitude, floored, so the scale stays
    finite and the sign of the spectrum is not flipped.
    """
    n = R.shape[-1] if n is None else n
    R = 0.5 * (R + R.mH)
    tr = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)  # (...,)
    tr = tr.abs().clamp_min(torch.finfo(tr.dtype).tiny ** 0.5)
    return R * (n / tr)[..., None, None]


def r_bp(y: torch.Tensor, codes: torch.Tensor, H: torch.Tensor, *, reg: float = 1e-2) -> torch.Tensor:
    """Back-projection R_bp = (1/L) sum_l Phi_l^+ y_l y_l^H Phi_l^+^H, trace N, (B, N, N).

    Phi_l^+ = Phi_l^H (Phi_l Phi_l^H + eps I)^-1 with eps = reg * ||H||_F^2 / M, i.e.
    ``reg`` times the mean eigenvalue of H H^H: relative, so it does not depend on the
    channel's scale. Since Phi_l Phi_l^H = H H^H for unit-modulus codes, the pseudo-inverse
    is diag(conj c_l) G with one G = H^H (H H^H + eps I)^-1 per scene.

    Cost O(M^3 + L M N + L N^2) per scene: the L back-projected snapshots form an N x L
    factor W and R_bp = W W^H / L. The M x M solve runs in complex128; the O(L N^2)
    product, most of the cost, in the input's precision (complex64 halves it, and R_bp
    is a network input, returned in that precision anyway).
    """
    _check_shapes(y, codes, H)
    if reg < 0:
        raise ValueError(f"reg must be >= 0 but got {reg=}")
    dtype = y.dtype
    product_dtype = dtype if dtype in (torch.complex64, torch.complex128) else torch.complex128
    y, codes, H = _work(y, codes, H)
    b, l, m = y.shape
    n = codes.shape[-1]
    gram = H @ H.mH  # (B, M, M)
    eps = reg * torch.diagonal(gram, dim1=-2, dim2=-1).real.sum(-1) / m  # (B,)
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    z = torch.linalg.solve(gram + eps[:, None, None] * eye, y.mT)  # (B, M, L)
    w = codes.conj().mT * (H.mH @ z)  # (B, N, L): Phi_l^+ y_l as columns
    # R is trace-normalised anyway: unit mean |w|^2 first keeps a complex64 product in
    # range whatever the snapshots' scale
    w = w / w.abs().square().mean((-1, -2)).sqrt().clamp_min(1e-300)[:, None, None]
    w = w.to(product_dtype)
    R = w @ w.mH / l
    return normalise_trace(R, n).to(dtype)


def ls_ridge(H: torch.Tensor, snapshots: int, scale: float) -> torch.Tensor:
    """The ridge lambda = scale * L * ||H||_F^4 / N^2 of ``r_ls``, (B,) float64.

    L ||H||_F^4 / N^2 is the mean eigenvalue of the normal operator sum_l P_l (.) P_l
    (its trace, sum_l ||Phi_l||_F^4, over its N^2 dimensions), so ``scale`` is a ridge
    relative to the operator and the solution does not depend on the channel's scale.
    """
    n = H.shape[-1]
    fro2 = H.abs().to(torch.float64).square().sum(dim=(-1, -2))  # (B,)
    return scale * snapshots * fro2.square() / n**2


def _normal_operator(R: torch.Tensor, phi_all: torch.Tensor, m: int, lam: torch.Tensor) -> torch.Tensor:
    """sum_l Phi_l^H Phi_l R Phi_l^H Phi_l + lam R for R (B, N, N), Phi stacked (B, L*M, N).

    Goes through the M x M images Phi_l R Phi_l^H: O(L M N^2 + L M^2 N) per scene instead
    of the O(L N^3) of P_l R P_l with P_l = Phi_l^H Phi_l.
    """
    b, lm, n = phi_all.shape
    l = lm // m
    phi = phi_all.view(b, l, m, n)
    y = (phi_all @ R).view(b, l, m, n)  # (B, L, M, N): Phi_l R
    e = y @ phi.mH  # (B, L, M, M): Phi_l R Phi_l^H
    z = (e @ phi).reshape(b, lm, n)  # (B, L*M, N): Phi_l R Phi_l^H Phi_l
    return phi_all.mH @ z + lam[:, None, None] * R


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Re tr(a^H b) per scene: the real inner product CG needs on Hermitian matrices."""
    return (a.conj() * b).real.sum(dim=(-1, -2))


def _solve_cg(rhs: torch.Tensor, phi_all: torch.Tensor, m: int, lam: torch.Tensor,
              tol: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched conjugate gradients on the Hermitian positive-definite normal operator.

    The iterates stay Hermitian (operator and right-hand side map Hermitian to
    Hermitian), so no projection is needed. Each scene stops updating once its relative
    residual is below ``tol``; the loop ends when all have.
    """
    x = torch.zeros_like(rhs)
    res = rhs.clone()
    p = res.clone()
    rr = _inner(res, res)  # (B,)
    rhs_norm = rr.sqrt().clamp_min(torch.finfo(rr.dtype).tiny)
    iters = torch.zeros(rhs.shape[0], dtype=torch.long, device=rhs.device)
    active = rr.sqrt() / rhs_norm > tol
    for _ in range(max_iter):
        if not active.any():
            break
        ap = _normal_operator(p, phi_all, m, lam)
        pap = _inner(p, ap)
        alpha = torch.where(active, rr / pap.clamp_min(torch.finfo(pap.dtype).tiny), torch.zeros_like(rr))
        x = x + alpha[:, None, None] * p
        res = res - alpha[:, None, None] * ap
        rr_new = _inner(res, res)
        beta = torch.where(active, rr_new / rr.clamp_min(torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
        p = torch.where(active[:, None, None], res + beta[:, None, None] * p, p)
        rr = torch.where(active, rr_new, rr)
        iters = iters + active.long()
        active = active & (rr.sqrt() / rhs_norm > tol)
    return x, iters, rr.sqrt() / rhs_norm


def _solve_exact(rhs: torch.Tensor, phi_all: torch.Tensor, m: int, lam: torch.Tensor) -> torch.Tensor:
    """Cholesky on the N^2 x N^2 normal matrix, built from the Kronecker structure.

    With row-major vec, vec(Phi R Phi^H) = (Phi kron conj Phi) vec(R), so the normal matrix
    is sum_l P_l kron conj(P_l) + lam I with P_l = Phi_l^H Phi_l. Building it costs
    O(L N^4) and the solve O(N^6) per scene: fine for N <= 32, hopeless for N = 144.
    """
    b, lm, n = phi_all.shape
    l = lm // m
    phi = phi_all.view(b, l, m, n)
    out = torch.empty_like(rhs)
    chunk = max(1, _EXACT_CHUNK_ENTRIES // (n**4))
    eye = torch.eye(n * n, dtype=rhs.dtype, device=rhs.device)
    for lo in range(0, b, chunk):
        sl = slice(lo, lo + chunk)
        p = phi[sl].mH @ phi[sl]  # (c, L, N, N)
        t = torch.einsum("clij,clkm->cikjm", p, p.conj()).reshape(-1, n * n, n * n)
        t = t + lam[sl, None, None] * eye
        chol, info = torch.linalg.cholesky_ex(t)
        x = rhs[sl].reshape(-1, n * n, 1)
        if bool((info == 0).all()):
            sol = torch.cholesky_solve(x, chol)
        else:  # lam = 0 with too few snapshots: singular; fall back to least squares
            sol = torch.linalg.lstsq(t, x).solution
        out[sl] = sol.view(-1, n, n)
    return out


def r_ls(y: torch.Tensor, codes: torch.Tensor, H: torch.Tensor, noise_var: torch.Tensor | float, *,
         ridge_scale: float = 0.1, method: Literal["auto", "exact", "cg"] = "auto",
         tol: float = 1e-3, max_iter: int = 500, return_info: bool = False
         ) -> torch.Tensor | tuple[torch.Tensor, LSInfo]:
    """Covariance matching: argmin_R sum_l ||y_l y_l^H - Phi_l R Phi_l^H - s^2 I||_F^2 + lam ||R||_F^2.

    Returns the Hermitian minimiser normalised to trace N, (B, N, N). It is not forced to
    be positive semi-definite: MUSIC only needs its dominant eigenvectors, and MVDR clips
    negative eigenvalues itself.

    The normal equations are sum_l P_l R P_l + lam R = sum_l Phi_l^H (y_l y_l^H - s^2 I) Phi_l
    with P_l = Phi_l^H Phi_l, lam = :func:`ls_ridge` (``ridge_scale``); the right-hand side
    is V V^H - s^2 sum_l P_l with v_l = Phi_l^H y_l.

    method: "exact" builds the N^2 x N^2 system (O(L N^4 + N^6) per scene); "cg" runs
    conjugate gradients with the operator applied through the M x M images
    (O(L M N^2) per iteration, memory O(L M N)); "auto" is exact up to
    ``EXACT_MAX_UNKNOWNS`` unknowns (N <= 32) and CG beyond. The paper preset
    (N^2 = 20736 unknowns) only ever takes the CG path.
    """
    _check_shapes(y, codes, H)
    if method not in ("auto", "exact", "cg"):
        raise ValueError(f"method must be 'auto', 'exact' or 'cg' but got {method=}")
    if ridge_scale < 0:
        raise ValueError(f"ridge_scale must be >= 0 but got {ridge_scale=}")
    dtype = y.dtype
    y, codes, H = _work(y, codes, H)
    b, l, m = y.shape
    n = codes.shape[-1]
    noise_var = torch.as_tensor(noise_var, dtype=torch.float64, device=y.device).expand(b)

    phi = H.unsqueeze(1) * codes.unsqueeze(2)  # (B, L, M, N): Phi_l = H diag(c_l)
    phi_all = phi.reshape(b, l * m, n)
    v = (phi.mH @ y.unsqueeze(-1)).squeeze(-1)  # (B, L, N): Phi_l^H y_l
    gram = H.mH @ H  # (B, N, N)
    sum_p = gram * (codes.mH @ codes)  # sum_l P_l: G_ij * sum_l conj(c_li) c_lj
    rhs = v.mT @ v.conj() - noise_var[:, None, None] * sum_p  # (B, N, N)
    lam = ls_ridge(H, l, ridge_scale)

    use_exact = method == "exact" or (method == "auto" and n * n <= EXACT_MAX_UNKNOWNS)
    if use_exact:
        x = _solve_exact(rhs, phi_all, m, lam)
        res = _normal_operator(x, phi_all, m, lam) - rhs
        rel = _inner(res, res).sqrt() / _inner(rhs, rhs).sqrt().clamp_min(1e-300)
        info = LSInfo(torch.zeros(b, dtype=torch.long, device=y.device), rel, "exact")
    else:
        # CG runs in the precision of the input: complex64 halves the memory traffic of
        # the operator (2-3x faster) and is ample for the default tolerance.
        cg_dtype = dtype if dtype in (torch.complex64, torch.complex128) else torch.complex128
        x, iters, rel = _solve_cg(rhs.to(cg_dtype), phi_all.to(cg_dtype), m, lam.to(cg_dtype.to_real()),
                                  tol, max_iter)
        info = LSInfo(iters, rel.to(torch.float64), "cg")
    R = normalise_trace(x, n).to(dtype)
    return (R, info) if return_info else R


__all__ = ["EXACT_MAX_UNKNOWNS", "LSInfo", "ls_ridge", "normalise_trace", "r_bp", "r_ls"]

"""MUSIC and MVDR spectra of a covariance over a set of steering vectors.

Two routes to the MUSIC signal subspace:

* :func:`signal_basis_eigh` — the K dominant eigenvectors of R. For estimates (R_ls,
  R_bp, the exact R); not for training: eigh's backward divides by eigenvalue gaps,
  which are exactly zero for a low-rank-plus-identity R (docs/failure-catalogue.md row 5).
* :func:`signal_basis_qr` — Q = orth(F) of a factor F with R ~ F F^H, by QR. Its
  backward has no eigenvalue gaps, so it stays finite where eigh's is NaN: the route for
  losses. Cheaper too: O(N K^2) instead of O(N^3).

Either basis gives the null spectrum ||P_n a||^2 = ||a||^2 - ||Q^H a||^2 in O(G N K),
instead of the O(G N (N - K)) of projecting on an explicit noise subspace.
:func:`music_null_spectrum_eigh` keeps the explicit form: no cancellation, so it is the
reference that tests compare against.

Steering matrices are passed as ``A`` with one steering vector per row, (G, N) or
(B, G, N); spectra come back real, (B, G).
"""

from __future__ import annotations

import torch

# Floor of the null spectrum before inverting it: the exact R puts true zeros there.
NULL_FLOOR = 1e-12


def _steering_products(basis: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """|b_k^H a_g|^2 for every basis column and steering row, (B, G, K)."""
    if A.ndim not in (2, 3):
        raise ValueError(f"steering must be (G, N) or (B, G, N) but got {tuple(A.shape)=}")
    prod = A.conj() @ basis.to(A.dtype)  # (B, G, K): a^H b
    return prod.real.square() + prod.imag.square()


def _column_mask(k: int | torch.Tensor, b: int, width: int, device: torch.device) -> torch.Tensor:
    """(B, width) bool: the first k[b] columns of scene b."""
    k = torch.as_tensor(k, device=device)
    if k.ndim == 0:
        k = k.expand(b)
    if k.shape != (b,):
        raise ValueError(f"k must be an int or have shape ({b},) but got {tuple(k.shape)=}")
    if bool((k < 0).any()) or bool((k > width).any()):
        raise ValueError(f"k must lie in 0..{width} but got {k.tolist()=}")
    return torch.arange(width, device=device) < k.unsqueeze(-1)


def signal_basis_eigh(R: torch.Tensor, k: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The k dominant eigenvectors of Hermitian R, (B, N, K_out), and their mask (B, K_out).

    ``k`` may differ per scene ((B,) tensor); columns beyond a scene's k are zeroed and
    masked False, so the basis can be used directly in :func:`music_null_spectrum`.
    Ordered by decreasing eigenvalue. O(N^3) per scene.
    """
    if R.ndim != 3 or R.shape[-1] != R.shape[-2]:
        raise ValueError(f"R must be (B, N, N) but got {tuple(R.shape)=}")
    b, n, _ = R.shape
    k_t = torch.as_tensor(k, device=R.device)
    width = int(k_t.max()) if k_t.numel() else 0
    mask = _column_mask(k_t, b, width, R.device)
    _, vecs = torch.linalg.eigh(0.5 * (R + R.mH))  # ascending eigenvalues
    basis = vecs.flip(-1)[..., :width] * mask.unsqueeze(-2).to(vecs.dtype)
    return basis, mask


def signal_basis_qr(F: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of a factor F (B, N, K) by reduced QR, (B, N, K).

    Differentiable with a finite gradient as long as F has full column rank; equal
    singular values (F F^H + s^2 I with equal powers) do not matter, unlike eigh.
    """
    if F.ndim != 3:
        raise ValueError(f"F must be (B, N, K) but got {tuple(F.shape)=}")
    q, _ = torch.linalg.qr(F, mode="reduced")
    return q


def music_null_spectrum(basis: torch.Tensor, A: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """||a||^2 - ||Q^H a||^2: the energy of each steering vector outside span(Q), (B, G).

    ``basis`` must have orthonormal (or masked-out zero) columns; ``mask`` (B, K) drops
    columns. O(B G N K). Differentiable in both arguments.
    """
    power = _steering_products(basis, A)  # (B, G, K)
    if mask is not None:
        power = power * mask.unsqueeze(-2).to(power.dtype)
    norm2 = A.real.square().sum(-1) + A.imag.square().sum(-1)  # (G,) or (B, G)
    return norm2 - power.sum(-1)


def music_spectrum(basis: torch.Tensor, A: torch.Tensor, mask: torch.Tensor | None = None,
                   *, floor: float = NULL_FLOOR) -> torch.Tensor:
    """MUSIC pseudo-spectrum 1 / ||P_n a||^2 from a signal basis, (B, G).

    The null spectrum is clamped at ``floor``: rounding can make it 0 or slightly
    negative at an exact source.
    """
    return 1.0 / music_null_spectrum(basis, A, mask).clamp_min(floor)


def music_spectrum_factor(F: torch.Tensor, A: torch.Tensor, *, floor: float = NULL_FLOOR) -> torch.Tensor:
    """MUSIC spectrum of the column space of F (B, N, K) at steering rows A (G, N): (B, G).

    QR, not eigh: safe inside a loss (no eigenvalue gaps in the backward pass).
    """
    return music_spectrum(signal_basis_qr(F), A, floor=floor)


def music_null_spectrum_eigh(R: torch.Tensor, k: int | torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """||U_n^H a||^2 with U_n the N - k weakest eigenvectors of R, (B, G).

    The textbook form, kept as an independent reference: it sums the small quantity
    directly instead of subtracting two numbers near ||a||^2. O(G N (N - k)) per scene.
    """
    b, n, _ = R.shape
    _, vecs = torch.linalg.eigh(0.5 * (R + R.mH))  # ascending
    k_t = torch.as_tensor(k, device=R.device).expand(b)
    noise_mask = torch.arange(n, device=R.device) < (n - k_t).unsqueeze(-1)  # (B, N)
    return (_steering_products(vecs, A) * noise_mask.unsqueeze(-2).to(R.real.dtype)).sum(-1)


def mvdr_whitener(R: torch.Tensor, *, loading: float = 1e-2) -> torch.Tensor:
    """W (B, N, N) with W^H W = (R_+ + delta I)^-1, where R_+ clips R's negative eigenvalues.

    MVDR then reads ||W a||^2 = a^H (R_+ + delta I)^-1 a. Clipping matters for R_ls, which
    is Hermitian but not PSD: a negative eigenvalue near -delta would blow the inverse up.
    delta = ``loading`` * tr(R_+) / N, relative so it means the same on any scale.
    """
    if loading <= 0:
        raise ValueError(f"MVDR needs a positive diagonal loading but got {loading=}")
    vals, vecs = torch.linalg.eigh(0.5 * (R + R.mH))  # (B, N), (B, N, N)
    vals = vals.clamp_min(0.0)
    delta = loading * vals.mean(-1, keepdim=True).clamp_min(torch.finfo(vals.dtype).tiny)
    scale = (vals + delta).rsqrt()  # (B, N)
    return scale.unsqueeze(-1).to(vecs.dtype) * vecs.mH


def mvdr_spectrum(R: torch.Tensor, A: torch.Tensor, *, loading: float = 1e-2) -> torch.Tensor:
    """MVDR (Capon) spectrum 1 / (a^H (R + delta I)^-1 a), (B, G).

    O(N^3 + G N^2) per scene: unlike MUSIC it touches every direction of R, so on a
    large grid it is the expensive estimator.
    """
    W = mvdr_whitener(R, loading=loading).to(A.dtype)  # (B, N, N)
    wa = A @ W.mT  # (B, G, N): row g is (W a_g)^T
    return 1.0 / (wa.real.square() + wa.imag.square()).sum(-1)


__all__ = [
    "NULL_FLOOR", "music_null_spectrum", "music_null_spectrum_eigh", "music_spectrum",
    "music_spectrum_factor", "mvdr_spectrum", "mvdr_whitener", "signal_basis_eigh", "signal_basis_qr",
]

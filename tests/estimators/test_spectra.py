import math

import pytest
import torch

from ris_model.estimators import (
    music_null_spectrum,
    music_null_spectrum_eigh,
    music_spectrum_factor,
    mvdr_spectrum,
    signal_basis_eigh,
    signal_basis_qr,
)

N, K = 12, 3


def _unit_rows(g: int, n: int, seed: int) -> torch.Tensor:
    a = torch.randn(g, n, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed))
    return a / a.norm(dim=-1, keepdim=True)


def _factor(b: int, seed: int) -> torch.Tensor:
    return torch.randn(b, N, K, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed))


def test_projector_spectrum_equals_noise_subspace_spectrum_on_low_rank():
    F = _factor(4, 0)
    A = _unit_rows(50, N, 1)
    R = F @ F.mH
    via_qr = music_null_spectrum(signal_basis_qr(F), A)
    via_eigh = music_null_spectrum_eigh(R, K, A)  # sum over the N - K weakest eigenvectors
    assert torch.allclose(via_qr, via_eigh, rtol=1e-9, atol=1e-12)
    # and the spectrum itself is its reciprocal
    assert torch.allclose(music_spectrum_factor(F, A), 1.0 / via_eigh, rtol=1e-8)


def test_steering_vector_in_the_signal_space_has_zero_null_spectrum():
    F = _factor(2, 3)
    a = F[:, :, 0] / F[:, :, 0].norm(dim=-1, keepdim=True)  # (B, N): inside span(F)
    null = music_null_spectrum(signal_basis_qr(F), a.unsqueeze(1))  # (B, 1)
    assert null.abs().max() < 1e-12


def test_eigh_basis_respects_per_scene_k():
    F = _factor(2, 4)
    R = F @ F.mH
    A = _unit_rows(20, N, 5)
    basis, mask = signal_basis_eigh(R, torch.tensor([1, 3]))
    assert mask.tolist() == [[True, False, False], [True, True, True]]
    batched = music_null_spectrum(basis, A, mask)
    for i, k in enumerate([1, 3]):
        alone = music_null_spectrum_eigh(R[i:i + 1], k, A)
        assert torch.allclose(batched[i], alone[0], rtol=1e-9, atol=1e-12)


def test_qr_gradient_is_finite_where_eigh_gradient_is_not():
    # F F^H + s^2 I with equal source powers on orthogonal columns: both the signal and the
    # noise eigenvalues are exactly repeated, and eigh's backward divides by their gaps.
    A = _unit_rows(6, N, 6)
    base = torch.eye(N, dtype=torch.complex128)[:, :K].unsqueeze(0) * 1.3
    F = base.clone().requires_grad_(True)
    R = F @ F.mH + 0.1 * torch.eye(N, dtype=torch.complex128)
    music_null_spectrum_eigh(R, K, A).sum().backward()
    assert not torch.isfinite(F.grad).all()

    F = base.clone().requires_grad_(True)
    music_spectrum_factor(F, A).sum().backward()
    assert torch.isfinite(F.grad).all()
    assert F.grad.abs().sum() > 0


def test_qr_and_eigh_gradients_agree_where_both_exist():
    A = _unit_rows(6, N, 7)
    F1 = _factor(1, 8).requires_grad_(True)
    music_null_spectrum_eigh(F1 @ F1.mH, K, A).sum().backward()
    F2 = F1.detach().clone().requires_grad_(True)
    music_null_spectrum(signal_basis_qr(F2), A).sum().backward()
    assert torch.allclose(F1.grad, F2.grad, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("loading", [1e-3, 1e-1])
def test_mvdr_matches_direct_inverse(loading):
    F = _factor(3, 9)
    R = F @ F.mH  # PSD: no clipping happens
    A = _unit_rows(30, N, 10)
    delta = loading * torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1) / N  # (B,)
    inv = torch.linalg.inv(R + delta[:, None, None] * torch.eye(N, dtype=R.dtype))
    expected = 1.0 / torch.einsum("gn,bnm,gm->bg", A.conj(), inv, A).real
    assert torch.allclose(mvdr_spectrum(R, A, loading=loading), expected, rtol=1e-8)


def test_mvdr_clips_negative_eigenvalues():
    F = _factor(1, 11)
    R = F @ F.mH
    vals, vecs = torch.linalg.eigh(R)
    indefinite = vecs @ torch.diag_embed((vals - 0.5 * vals.max()).to(vecs.dtype)) @ vecs.mH
    A = _unit_rows(30, N, 12)
    spec = mvdr_spectrum(indefinite, A)
    assert torch.isfinite(spec).all() and (spec > 0).all()


def test_mvdr_peaks_at_a_single_source():
    # One source plus loading: (R + dI)^-1 = (I - c a0 a0^H) / d, so a^H W a is smallest at a0.
    a0 = _unit_rows(1, N, 13)
    R = N * (a0.T @ a0.conj()).unsqueeze(0)  # a0 a0^H for the row a0
    A = torch.cat([a0, _unit_rows(40, N, 14)])
    spec = mvdr_spectrum(R, A)
    assert int(spec.argmax()) == 0
    # eigenvalues N and 0, so delta = 1e-2 * tr(R) / N = 1e-2 and a0^H W a0 = 1 / (N + delta)
    assert math.isclose(float(spec[0, 0]), N + 1e-2, rel_tol=1e-9)

"""The CRB against closed forms (plain ULA) and against finite differences (the RIS model)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from ris_model.config import load_config
from ris_model.physics import crb, crb_from_model, fisher_information, simulate, system_steering_fn

N_ULA, T = 8, 100
ANGLES = np.radians([-10.3, 20.7])


def ula_steering_fn(loc: torch.Tensor) -> torch.Tensor:
    """Unit-modulus half-wavelength ULA; loc (B, K, 1) holds the angle from broadside."""
    n = torch.arange(N_ULA, dtype=torch.float64)
    return torch.exp(1j * math.pi * n * torch.sin(loc[..., 0:1]))


def _ula_closed_forms(snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """(diagonal-power Slepian-Bangs CRB, Stoica-Nehorai CRB) per source, by hand-derived formulas."""
    p, s2 = 1.0, 10 ** (-snr_db / 10)
    n = np.arange(N_ULA)[:, None]
    A = np.exp(1j * np.pi * n * np.sin(ANGLES))  # (N, K)
    D = 1j * np.pi * n * np.cos(ANGLES) * A  # dA/dtheta
    P = p * np.eye(2)
    C = A @ P @ A.conj().T + s2 * np.eye(N_ULA)
    Ci = np.linalg.inv(C)
    # Slepian-Bangs with eta = (theta_1, theta_2, p_1, p_2, sigma^2).
    dC = [p * (np.outer(D[:, k], A[:, k].conj()) + np.outer(A[:, k], D[:, k].conj())) for k in range(2)]
    dC += [np.outer(A[:, k], A[:, k].conj()) for k in range(2)] + [np.eye(N_ULA)]
    F = np.array([[T * np.trace(Ci @ a @ Ci @ b).real for b in dC] for a in dC])
    sb = np.sqrt(np.diag(np.linalg.inv(F))[:2])
    # Stoica-Nehorai: CRB = s2/(2T) [Re{(D^H Pperp D) .* (P A^H C^-1 A P)^T}]^-1.
    perp = np.eye(N_ULA) - A @ np.linalg.solve(A.conj().T @ A, A.conj().T)
    H = (D.conj().T @ perp @ D) * (P @ A.conj().T @ Ci @ A @ P).T
    sn = np.sqrt(np.diag(s2 / (2 * T) * np.linalg.inv(H.real)))
    return sb, sn


@pytest.mark.parametrize("snr_db, expected_sb, expected_sn", [(0.0, 0.227, 0.228), (10.0, 0.0683, 0.0684)])
def test_ula_crb_matches_closed_forms(snr_db, expected_sb, expected_sn):
    s2 = 10 ** (-snr_db / 10)
    phi_meas = torch.eye(N_ULA, dtype=torch.complex128).expand(T, N_ULA, N_ULA)
    params = torch.tensor(ANGLES).reshape(2, 1)
    std = crb_from_model(phi_meas, ula_steering_fn, params, torch.ones(2), s2)  # (K, 1) radians
    assert std.shape == (2, 1)
    rms = math.degrees(std.square().mean().sqrt().item())
    assert rms == pytest.approx(expected_sb, rel=5e-3)
    sb, sn = _ula_closed_forms(snr_db)
    np.testing.assert_allclose(std[:, 0].numpy(), sb, rtol=1e-8)
    assert math.degrees(np.sqrt(np.mean(sn ** 2))) == pytest.approx(expected_sn, rel=5e-3)
    # Knowing the source covariance is diagonal can only help.
    assert (std[:, 0].numpy() <= sn * (1 + 1e-9)).all()


def test_ris_fisher_information_matches_finite_differences():
    system = dataclasses.replace(load_config("small").system, nx=3, ny=3, bs_antennas=3, snapshots=4,
                                 k_max=2, r_min=0.8, r_max=3.0)
    batch = simulate(system, 1, seed=0, k=2, snr_db=5.0, dtype=torch.complex128)
    phi_meas = batch.measurement_matrices()[0]  # (L, M, N)
    steer = system_steering_fn(system)
    params = torch.stack([batch.phi, batch.theta, batch.r], -1)[0]  # (K, 3)
    eta = torch.cat([params.reshape(-1), batch.power[0], batch.noise_var])

    def cov(e: torch.Tensor) -> np.ndarray:
        a = steer(e[:6].reshape(1, 2, 3))[0]  # (K, N)
        v = phi_meas @ a.T  # (L, M, K)
        c = (v * e[6:8]) @ v.mH + e[8] * torch.eye(3, dtype=torch.float64)
        return c.numpy()

    c0 = cov(eta)
    ci = np.linalg.inv(c0)
    dc, h = [], 1e-6
    for i in range(len(eta)):
        e_plus, e_minus = eta.clone(), eta.clone()
        e_plus[i] += h
        e_minus[i] -= h
        dc.append((cov(e_plus) - cov(e_minus)) / (2 * h))
    fd = np.array([[sum(np.trace(ci[l] @ a[l] @ ci[l] @ b[l]).real for l in range(4)) for b in dc] for a in dc])
    fim = fisher_information(phi_meas, steer, params.unsqueeze(0), batch.power, batch.noise_var)[0]
    np.testing.assert_allclose(fim.numpy(), fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


def test_padding_does_not_change_the_bound():
    system = load_config("small").system
    batch = simulate(system, 4, seed=1, k=1, snr_db=10.0)
    res = crb(system, batch)
    assert res.phi.shape == (4, system.k_max) and res.r.shape == (4, system.k_max)
    assert torch.isnan(res.phi[~batch.mask]).all() and torch.isnan(res.r[~batch.mask]).all()
    # The same scenes described with a single slot: identical bound.
    params = torch.stack([batch.phi, batch.theta, batch.r], -1)[:, :1].double()
    alone = crb_from_model(batch.measurement_matrices(), system_steering_fn(system), params,
                           batch.power[:, :1], batch.noise_var)
    torch.testing.assert_close(alone[:, 0, 0], res.phi[:, 0], rtol=1e-9, atol=0)
    torch.testing.assert_close(alone[:, 0, 2], res.r[:, 0], rtol=1e-9, atol=0)


def test_far_field_has_no_range_and_more_snr_tightens_the_bound():
    system = load_config("tiny").system
    low = crb(system, simulate(system, 16, seed=2, snr_db=0.0))
    high = crb(system, simulate(system, 16, seed=2, snr_db=20.0))
    assert low.r is None
    m = low.mask
    assert torch.isfinite(low.phi[m]).all() and (low.phi[m] > 0).all()
    assert (high.phi[m] < low.phi[m]).all() and (high.theta[m] < low.theta[m]).all()


def test_bound_is_near_the_reference_implementation():
    """docs/physics.md: tiny, K=1, 10 dB: median sqrt(CRB) 0.55 / 0.45 deg (sampling noise +-30%)."""
    system = load_config("tiny").system
    res = crb(system, simulate(system, 64, seed=3, k=1, snr_db=10.0))
    phi_deg = math.degrees(res.phi[:, 0].median().item())
    theta_deg = math.degrees(res.theta[:, 0].median().item())
    assert 0.55 / 1.5 < phi_deg < 0.55 * 1.5
    assert 0.45 / 1.5 < theta_deg < 0.45 * 1.5


def test_zero_noise_is_rejected():
    system = load_config("tiny").system
    batch = simulate(system, 2, seed=0)
    batch = dataclasses.replace(batch, noise_var=torch.zeros(2))
    with pytest.raises(ValueError, match="noise variance"):
        crb(system, batch)

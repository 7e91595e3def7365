import math

import pytest
import torch

from ris_model.config import load_config
from ris_model.estimators import (
    Estimates,
    estimate_order,
    localize,
    localize_factor,
    mdl_order,
    range_planes,
    search_grid,
    steering_and_jacobian,
)
from ris_model.physics import angular_distance, ris_steering, simulate, system_positions, wavenumber

# (preset, scenes): the paper grid is large, so few scenes there.
PRESETS = [("tiny", 12), ("small", 6), ("paper", 2)]


def _errors(est: Estimates, s) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-source (angle, phi, theta) errors in degrees, each true source against its nearest
    estimate (no Hungarian: sources are >= 5 deg apart, so nearest is unambiguous here)."""
    d = angular_distance(est.phi.unsqueeze(-1), est.theta.unsqueeze(-1),
                         s.phi.double().unsqueeze(-2), s.theta.double().unsqueeze(-2))  # (B, Ke, Kt)
    d = torch.where(est.mask.unsqueeze(-1), d, torch.full_like(d, math.inf))
    nearest = d.argmin(1)  # (B, Kt)
    phi_hat = est.phi.gather(1, nearest)
    theta_hat = est.theta.gather(1, nearest)
    m = s.mask
    ang = d.gather(1, nearest.unsqueeze(1)).squeeze(1)[m]
    return (torch.rad2deg(ang), torch.rad2deg(phi_hat - s.phi.double())[m],
            torch.rad2deg(theta_hat - s.theta.double())[m])


@pytest.mark.parametrize("preset,n", PRESETS)
def test_music_on_the_exact_covariance_recovers_every_source(preset, n):
    system = load_config(preset).system
    s = simulate(system, n, seed=21, snr_db=20.0, dtype=torch.complex128)
    est = localize(s.R, system, s.k)
    assert est.mask.sum(-1).tolist() == s.k.tolist()
    ang, dphi, dtheta = _errors(est, s)
    # far below the 1 deg grid step: the refinement converges on the exact null
    assert dphi.square().mean().sqrt() < 1e-4 and dtheta.square().mean().sqrt() < 1e-4
    assert ang.max() < 1e-3
    if system.near_field:
        d = angular_distance(est.phi.unsqueeze(-1), est.theta.unsqueeze(-1),
                             s.phi.double().unsqueeze(-2), s.theta.double().unsqueeze(-2))
        d = torch.where(est.mask.unsqueeze(-1), d, torch.full_like(d, math.inf))
        r_hat = est.r.gather(1, d.argmin(1))
        rel = ((r_hat - s.r.double()) / s.r.double())[s.mask]
        assert rel.abs().max() < 1e-4
    else:
        assert torch.isinf(est.r[est.mask]).all()


def test_refinement_goes_far_below_the_grid_step():
    system = load_config("tiny").system
    s = simulate(system, 12, seed=22, snr_db=20.0, dtype=torch.complex128)
    coarse = localize(s.R, system, s.k, refine=False)
    fine = localize(s.R, system, s.k, refine=True)
    ang_coarse = _errors(coarse, s)[0]
    ang_fine = _errors(fine, s)[0]
    assert ang_coarse.max() < 1.0  # within a grid cell (1 deg step: <= 0.71 deg diagonal)
    assert ang_coarse.mean() > 0.05  # the grid alone is not that good ...
    assert ang_fine.max() < 1e-3  # ... the refinement is


def test_mvdr_on_a_single_exact_source_is_unbiased():
    # With one source, (R + d I)^-1 = (I - c a0 a0^H) / d: the MVDR peak sits exactly on a0.
    system = load_config("small").system
    s = simulate(system, 6, seed=23, snr_db=20.0, k=1, dtype=torch.complex128)
    est = localize(s.R, system, 1, method="mvdr")
    ang = _errors(est, s)[0]
    assert ang.max() < 1e-3


def test_localize_factor_matches_localize_on_the_same_subspace():
    system = load_config("tiny").system
    s = simulate(system, 6, seed=24, snr_db=20.0, k=2, dtype=torch.complex128)
    a = localize(s.R, system, 2)
    b = localize_factor(s.R_factor, system)
    for x, y in ((a.phi, b.phi), (a.theta, b.theta)):
        assert torch.allclose(x.sort(-1).values, y.sort(-1).values, atol=1e-8)


def test_batched_search_equals_scene_by_scene():
    system = load_config("tiny").system
    s = simulate(system, 4, seed=25, snr_db=20.0, dtype=torch.complex128)
    R_noisy = s.R + 0.3 * torch.eye(system.n_elements, dtype=s.R.dtype)  # any covariance will do
    batched = localize(R_noisy, system, s.k, method="mvdr")
    for i in range(len(s)):
        alone = localize(R_noisy[i:i + 1], system, s.k[i:i + 1], method="mvdr")
        k = int(s.k[i])
        assert torch.allclose(batched.phi[i, :k], alone.phi[0, :k], atol=1e-9)
        assert torch.allclose(batched.theta[i, :k], alone.theta[0, :k], atol=1e-9)


def test_mdl_picks_the_number_of_sources_on_a_clean_covariance():
    for preset in ("tiny", "small"):
        system = load_config(preset).system
        s = simulate(system, 12, seed=26, snr_db=20.0, dtype=torch.complex128)
        eye = torch.eye(system.n_elements, dtype=s.R.dtype)
        for R in (s.R, s.R + 1e-3 * eye):  # exact (rank K) and with a little white noise
            k_hat = estimate_order(R, system.snapshots, method="mdl", k_max=system.k_max)
            assert k_hat.tolist() == s.k.tolist()
        est = localize(s.R, system, None)  # the count flows into the search
        assert est.k.tolist() == s.k.tolist()


def test_mdl_on_white_noise_finds_no_source():
    lam = torch.ones(3, 16, dtype=torch.float64) + 1e-3 * torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    assert mdl_order(lam, 100).tolist() == [0, 0, 0]


def test_threshold_order_counts_strong_eigenvalues():
    system = load_config("small").system
    s = simulate(system, 8, seed=27, snr_db=20.0, dtype=torch.complex128)
    assert estimate_order(s.R, system.snapshots, method="threshold", threshold=1e-3).tolist() == s.k.tolist()


@pytest.mark.parametrize("near", [False, True])
def test_steering_jacobian_matches_the_physics_and_finite_differences(near):
    system = load_config("small" if near else "tiny").system
    pos = system_positions(system)
    k0 = wavenumber(system)
    g = torch.Generator().manual_seed(3)
    x = torch.stack([torch.rand(5, generator=g) - 0.5, torch.rand(5, generator=g) - 0.5,
                     (0.1 + torch.rand(5, generator=g)) if near else torch.zeros(5)], -1).double()
    a, da = steering_and_jacobian(x, pos, k0)
    r = 1.0 / x[:, 2] if near else None
    assert torch.allclose(a, ris_steering(x[:, 0], x[:, 1], r, pos, k0), atol=1e-12)
    h = 1e-6
    for i in range(3 if near else 2):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = h
        fd = (steering_and_jacobian(x + e, pos, k0)[0] - steering_and_jacobian(x - e, pos, k0)[0]) / (2 * h)
        assert torch.allclose(fd, da[..., i], atol=1e-8)


def test_grid_covers_the_box_and_planes_are_uniform_in_inverse_range():
    system = load_config("small").system
    grid = search_grid(system)
    assert math.isclose(float(grid.phi[-1]), math.radians(system.phi_max_deg))
    assert math.isclose(float(grid.theta[0]), -math.radians(system.theta_max_deg))
    rho = range_planes(system)
    assert rho.numel() == system.range_planes
    assert torch.allclose(rho.diff(), rho.diff()[:1].expand(rho.numel() - 1))
    assert math.isclose(float(1 / rho[0]), system.r_max) and math.isclose(float(1 / rho[-1]), system.r_min)
    assert search_grid(system) is grid  # cached per system


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_grid_steering_is_the_physics_steering(preset):
    system = load_config(preset).system
    grid = search_grid(system)
    pos = system_positions(system)
    idx = torch.tensor([0, 17, grid.phi.numel() - 1])
    jdx = torch.tensor([0, 29, grid.theta.numel() - 1])
    for p, rho in enumerate(grid.rho.tolist()):
        pp, tt = grid.phi[idx].unsqueeze(-1), grid.theta[jdx].unsqueeze(0)
        pp, tt = pp.expand(3, 3), tt.expand(3, 3)
        r = None if rho == 0 else torch.full_like(pp, 1.0 / rho)
        expected = ris_steering(pp, tt, r, pos, wavenumber(system))
        got = grid.steering[p][idx][:, jdx].to(torch.complex128)
        assert torch.allclose(got, expected, atol=1e-6)

"""The joint subspace fit: its derivatives, what it recovers, and that it never fits worse than MUSIC."""

import math

import pytest
import torch

from ris_model.baseline import estimator_row
from ris_model.config import ConfigError, load_config
from ris_model.estimators import localize, r_bp, search_grid, signal_basis_eigh
from ris_model.estimators.subspace_fit import fit_objective, fit_subspace
from ris_model.physics import angular_distance, simulate, system_positions, wavenumber


def _two_source_scenes(preset: str, n: int, seed: int):
    system = load_config(preset).system
    s = simulate(system, n, seed=seed, snr_db=20.0, k=2, dtype=torch.complex128)
    rho = 1.0 / s.r.double() if system.near_field else torch.zeros_like(s.phi, dtype=torch.float64)
    x = torch.stack([s.phi.double(), s.theta.double(), rho], dim=-1)[:, :2]  # (B, 2, 3); labels pad to k_max
    return system, s, x


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_gradient_matches_finite_differences(preset):
    system, s, x = _two_source_scenes(preset, 3, seed=5)
    basis, _ = signal_basis_eigh(s.R + 0.05 * torch.randn_like(s.R), 2)  # a basis the sources do not span
    dims = 3 if system.near_field else 2
    positions, k0 = system_positions(system, dtype=torch.float64), wavenumber(system)
    x = x + 0.01  # away from the truth, where the gradient is not zero
    f, grad, gn = fit_objective(x, basis, positions, k0, dims)
    for p in range(2 * dims):
        src, coord = divmod(p, dims)
        h = 1e-6 / 10 ** (coord == 2)  # rho is in 1/m, the angles in radians
        up, down = x.clone(), x.clone()
        up[:, src, coord] += h
        down[:, src, coord] -= h
        numeric = (fit_objective(up, basis, positions, k0, dims)[0]
                   - fit_objective(down, basis, positions, k0, dims)[0]) / (2 * h)
        torch.testing.assert_close(2 * grad[:, p], numeric, rtol=1e-4, atol=1e-8)
    assert torch.linalg.eigvalsh(gn).min() > -1e-9  # J^H J is positive semi-definite


def test_two_sources_in_one_valley_are_both_recovered():
    """MUSIC's failure mode: one pick between the two sources, the other on a far ripple."""
    system, s, x = _two_source_scenes("tiny", 8, seed=11)
    basis, _ = signal_basis_eigh(s.R, 2)
    start = x.clone()
    start[:, 0, :2] = 0.5 * (x[:, 0, :2] + x[:, 1, :2])  # the valley's middle
    start[:, 1, :2] = torch.tensor([0.9, -0.5], dtype=torch.float64)  # an unrelated ripple
    fitted, f = fit_subspace(start, basis, system, search_grid(system))
    d = angular_distance(fitted[..., 0].unsqueeze(-1), fitted[..., 1].unsqueeze(-1),
                         x[..., 0].unsqueeze(-2), x[..., 1].unsqueeze(-2))  # (B, est, true)
    assert torch.rad2deg(d.amin(1)).max() < 1e-3  # every true source has an estimate on it
    assert f.max() < 1e-10


def test_near_field_sources_are_recovered_with_their_range():
    system, s, x = _two_source_scenes("small", 4, seed=3)
    basis, _ = signal_basis_eigh(s.R, 2)
    start = x.clone()
    start[:, 1, :2] = torch.tensor([-0.8, 0.6], dtype=torch.float64)
    start[:, 1, 2] = x[:, 0, 2]
    fitted, f = fit_subspace(start, basis, system, search_grid(system))
    assert f.max() < 1e-10
    order = (fitted[:, :, 0] - x[:, :1, 0]).abs().argmin(-1)  # which estimate is source 0
    same = torch.stack([order, 1 - order], dim=-1)
    r_fit = 1.0 / fitted[..., 2].gather(1, same)
    torch.testing.assert_close(r_fit, s.r.double()[:, :2], rtol=1e-5, atol=0.0)


def test_the_joint_fit_never_fits_the_subspace_worse_than_musics_peaks():
    system = load_config("tiny").system
    s = simulate(system, 120, seed=8, snr_db=10.0, k=2)
    R = r_bp(s.y, s.codes, s.H).to(torch.complex128)
    basis, _ = signal_basis_eigh(R, 2)
    positions, k0 = system_positions(system, dtype=torch.float64), wavenumber(system)

    def fit_of(est):
        x = torch.stack([est.phi, est.theta, torch.zeros_like(est.phi)], dim=-1)
        return fit_objective(x, basis, positions, k0, 2)[0]

    peaks = localize(R, system, s.k, music_fit="peaks")
    joint = localize(R, system, s.k, music_fit="joint")
    assert (fit_of(joint) <= fit_of(peaks) + 1e-12).all()
    assert (fit_of(joint) < fit_of(peaks) - 1e-3).any()  # and it does move some scenes


def test_joint_music_cuts_the_gross_errors_of_an_estimated_covariance():
    system = load_config("tiny").system
    s = simulate(system, 200, seed=4, snr_db=10.0)
    R = r_bp(s.y, s.codes, s.H)
    peaks = estimator_row(system, localize(R, system, s.k, music_fit="peaks"), s)
    joint = estimator_row(system, localize(R, system, s.k, music_fit="joint"), s)
    assert joint["rmse_phi_deg"] < 0.8 * peaks["rmse_phi_deg"]
    assert joint["rmse_theta_deg"] < peaks["rmse_theta_deg"]
    assert joint["within_1deg"] >= peaks["within_1deg"]


def test_single_source_scenes_are_left_to_music():
    system = load_config("tiny").system
    s = simulate(system, 20, seed=2, snr_db=10.0, k=1)
    R = r_bp(s.y, s.codes, s.H)
    peaks, joint = localize(R, system, s.k, music_fit="peaks"), localize(R, system, s.k, music_fit="joint")
    torch.testing.assert_close(joint.phi, peaks.phi)
    torch.testing.assert_close(joint.theta, peaks.theta)


def test_an_unknown_music_fit_is_refused():
    system = load_config("tiny").system
    with pytest.raises(ValueError, match="music_fit must be 'joint' or 'peaks'"):
        localize(torch.eye(system.n_elements, dtype=torch.complex128)[None], system, 1, music_fit="ridge")
    with pytest.raises(ConfigError, match="music_fit"):
        load_config("tiny", overrides=["eval.music_fit=ridge"])


def test_the_config_key_reaches_every_row():
    from ris_model.baseline import localize_rule, run_baseline

    cfg = load_config("tiny", overrides=["eval.music_fit=peaks"])
    assert localize_rule(cfg)["music_fit"] == "peaks"
    runs = {fit: run_baseline(load_config("tiny", overrides=[f"eval.music_fit={fit}"]), 10.0, 60, 2, 4,
                              estimators=("music_bp",), crb=False) for fit in ("joint", "peaks")}
    rows = {fit: run["estimators"]["music_bp"] for fit, run in runs.items()}
    assert rows["joint"]["rmse_phi_deg"] != rows["peaks"]["rmse_phi_deg"]
    assert not math.isnan(rows["joint"]["rmse_phi_deg"])

import math

import pytest
import torch

from ris_model.config import load_config
from ris_model.estimators import Estimates, localize, r_ls
from ris_model.estimators.snapshot_fit.fit import fit_and_localize
from ris_model.estimators.snapshot_fit.likelihood import (
    SnapshotLikelihood,
    SourceFit,
    fitted_covariance,
    refine_sources,
    snapshot_nll,
)
from ris_model.evaluation.metrics import evaluate_estimates
from ris_model.physics import simulate
from ris_model.physics.simulate import steering_matrix


def _truth(s, *, dphi_deg: float = 0.0, dtheta_deg: float = 0.0, r_scale: float = 1.0) -> Estimates:
    """The true sources of a SceneBatch as Estimates, optionally moved by fixed offsets."""
    m = s.mask
    zero = torch.zeros_like(s.phi, dtype=torch.float64)
    phi = torch.where(m, s.phi.double() + math.radians(dphi_deg), zero)
    theta = torch.where(m, s.theta.double() + math.radians(dtheta_deg), zero)
    return Estimates(phi=phi, theta=theta, r=s.r.double() * r_scale, mask=m, k=s.k, score=zero)


def _angle_errors_deg(est: Estimates, s) -> torch.Tensor:
    """Slot-wise angle errors of estimates that keep the labels' slot order (no matching needed)."""
    return torch.rad2deg(torch.hypot(est.phi.double() - s.phi.double(), est.theta.double() - s.theta.double()))[s.mask]


def test_snapshot_nll_matches_the_dense_gaussian_likelihood():
    g = torch.Generator().manual_seed(0)
    b, l, m, n, k = 3, 5, 4, 16, 2
    c = lambda *shape: torch.randn(*shape, dtype=torch.complex128, generator=g)  # noqa: E731
    y, codes, H, A = c(b, l, m), c(b, l, n), c(b, m, n), c(b, k, n)
    A[2, 1] = 0  # a padded slot
    power = torch.rand(b, k, dtype=torch.float64, generator=g) + 0.1
    noise_var = torch.rand(b, dtype=torch.float64, generator=g) + 0.1
    phi_meas = H.unsqueeze(1) * codes.unsqueeze(2)  # Phi_l = H diag(c_l)
    G = phi_meas @ (A.mT * power.sqrt().unsqueeze(-2)).unsqueeze(1)
    C = G @ G.mH + noise_var[:, None, None, None] * torch.eye(m, dtype=torch.complex128)
    quad = (y.conj().unsqueeze(-2) @ torch.linalg.solve(C, y.unsqueeze(-1))).real[..., 0, 0]
    dense = (torch.linalg.slogdet(C).logabsdet + quad).sum(-1)
    torch.testing.assert_close(snapshot_nll(y, codes, H, noise_var, A, power), dense)


def test_the_likelihood_prefers_the_true_sources_to_displaced_ones():
    system = load_config("tiny").system
    s = simulate(system, 24, seed=3, snr_db=20.0, dtype=torch.complex128)
    lik = SnapshotLikelihood(s.y, s.codes, s.H, s.noise_var.double())
    power = s.power.double() * s.mask  # the powers the snapshots were drawn with

    def nll(est: Estimates) -> torch.Tensor:
        return lik(steering_matrix(system, est.phi, est.theta, None, est.mask), power)

    at_truth = nll(_truth(s))
    assert (at_truth < nll(_truth(s, dphi_deg=2.0))).all()
    assert (at_truth < nll(_truth(s, dtheta_deg=-2.0))).all()


def test_refinement_pulls_displaced_sources_back_to_the_truth():
    system = load_config("tiny").system
    s = simulate(system, 24, seed=4, snr_db=20.0)
    start = _truth(s, dphi_deg=1.5, dtheta_deg=-1.0)
    fit = refine_sources(start, s, system, steps=150)
    before, after = _angle_errors_deg(start, s), _angle_errors_deg(fit.estimates, s)
    assert before.min() > 1.7  # every source starts sqrt(1.5^2 + 1^2) deg off (a little more off-axis)
    assert after.median() < 0.5 and after.mean() < before.mean() / 3


def test_refinement_in_the_near_field_also_fits_the_range():
    system = load_config("small").system
    s = simulate(system, 6, seed=5, snr_db=20.0)
    start = _truth(s, dphi_deg=1.0, r_scale=1.3)
    fit = refine_sources(start, s, system, steps=150)
    rel = lambda est: ((est.r.double() - s.r.double()).abs() / s.r.double())[s.mask]  # noqa: E731
    assert rel(fit.estimates).median() < rel(start).median() / 2
    assert _angle_errors_deg(fit.estimates, s).median() < 0.3


def test_the_fitted_covariance_of_the_true_sources_is_the_target():
    system = load_config("small").system
    s = simulate(system, 8, seed=10, snr_db=10.0, dtype=torch.complex128)
    truth = SourceFit(_truth(s), s.power.double() * s.mask, torch.zeros(len(s), dtype=torch.float64))
    torch.testing.assert_close(fitted_covariance(truth, system), s.R)


def test_each_scene_keeps_its_best_iterate_even_when_the_steps_overshoot():
    system = load_config("tiny").system
    s = simulate(system, 32, seed=11, snr_db=10.0)
    start = _truth(s, dphi_deg=0.5)
    lik = SnapshotLikelihood.of(s, s.y.device)
    at_start = refine_sources(start, s, system, steps=0).nll
    wild = refine_sources(start, s, system, steps=6, step_deg=4.0)  # Adam jumps ~4 deg a step
    assert (wild.nll <= at_start).all()
    est = wild.estimates
    again = lik(steering_matrix(system, est.phi.double(), est.theta.double(), None, est.mask), wild.power)
    torch.testing.assert_close(again, wild.nll)


def test_the_fit_tells_a_strong_source_from_a_weak_one():
    system = load_config("tiny").system
    s = simulate(system, 48, seed=12, snr_db=20.0, k=2)
    start = _truth(s)

    def ratio_correlation(power: torch.Tensor) -> float:
        """Correlation of log(p1 / p2) with the truth's over the two-source scenes."""
        pairs = torch.stack([(power[:, 0] / power[:, 1]).log(), (s.power[:, 0] / s.power[:, 1]).double().log()])
        return torch.corrcoef(pairs)[0, 1].item()

    assert ratio_correlation(refine_sources(start, s, system, steps=0).power) < 0.3  # equal shares to start
    assert ratio_correlation(refine_sources(start, s, system, steps=150).power) > 0.7


def test_sources_stay_within_the_radius_and_the_search_box():
    system = load_config("tiny").system
    s = simulate(system, 24, seed=13, snr_db=10.0)
    phi_max, theta_max = system.angle_bounds_rad()
    edge = _truth(s)
    edge = Estimates(phi=torch.where(s.mask, torch.full_like(edge.phi, phi_max), edge.phi), theta=edge.theta,
                     r=edge.r, mask=edge.mask, k=edge.k, score=edge.score)
    toward_centre = -torch.sign(s.phi.double()) * math.radians(8.0)  # keeps every start inside the box
    start = _truth(s)
    start = Estimates(phi=torch.where(s.mask, start.phi + toward_centre, start.phi), theta=start.theta, r=start.r,
                      mask=start.mask, k=start.k, score=start.score)  # 8 deg off: the fit would like to go back
    fit = refine_sources(start, s, system, steps=100, radius_deg=2.0).estimates
    moved = torch.rad2deg(torch.hypot(fit.phi.double() - start.phi, fit.theta.double() - start.theta))[s.mask]
    assert moved.max() <= 2.0 + 1e-9 and moved.max() > 1.9
    at_edge = refine_sources(edge, s, system, steps=50).estimates
    assert at_edge.phi.abs().max() <= phi_max + 1e-12 and at_edge.theta.abs().max() <= theta_max + 1e-12


def test_zero_steps_keeps_the_start_and_padded_slots_stay_empty():
    system = load_config("tiny").system
    s = simulate(system, 16, seed=6, snr_db=10.0, k=None)
    assert not s.mask.all()  # some scenes have a padded slot
    start = _truth(s, dphi_deg=0.7)
    unchanged = refine_sources(start, s, system, steps=0).estimates
    torch.testing.assert_close(unchanged.phi.double(), start.phi)
    fit = refine_sources(start, s, system, steps=20)
    padded = ~s.mask
    assert (fit.estimates.phi[padded] == 0).all() and (fit.power[padded] == 0).all()
    assert (fit.power[s.mask] > 0).all() and torch.isfinite(fit.nll).all()


def test_music_on_the_fitted_covariance_returns_the_fitted_sources():
    system = load_config("tiny").system
    s = simulate(system, 12, seed=7, snr_db=10.0)
    fit = refine_sources(_truth(s, dtheta_deg=0.5), s, system, steps=30)
    R = fitted_covariance(fit, system)
    trace = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)
    torch.testing.assert_close(trace, torch.full_like(trace, float(system.n_elements)))
    assert (torch.linalg.matrix_rank(R, hermitian=True, rtol=1e-8) == s.k).all()
    again = localize(R, system, s.k)
    m = evaluate_estimates(again, fit.estimates.phi, fit.estimates.theta, fit.estimates.r, s.mask)
    assert m["rmse_phi_deg"] < 1e-3 and m["rmse_theta_deg"] < 1e-3


def test_refining_music_on_r_ls_puts_more_sources_within_a_degree():
    system = load_config("tiny").system
    s = simulate(system, 120, seed=8, snr_db=10.0)
    R = r_ls(s.y, s.codes, s.H, s.noise_var, ridge_scale=system.ls_ridge_scale).to(torch.complex128)
    plain = evaluate_estimates(localize(R, system, s.k), s.phi, s.theta, s.r, s.mask)
    local = fit_and_localize(localize(R, system, s.k), s, system, moves=0)
    refined = evaluate_estimates(local, s.phi, s.theta, s.r, s.mask)
    assert refined["within_1deg"] > plain["within_1deg"] + 0.15


def test_negative_steps_and_mismatched_batches_are_refused():
    system = load_config("tiny").system
    s = simulate(system, 2, seed=9, snr_db=10.0)
    with pytest.raises(ValueError, match="steps"):
        refine_sources(_truth(s), s, system, steps=-1)
    with pytest.raises(ValueError, match="2 scenes of estimates but 1 scenes of snapshots"):
        refine_sources(_truth(s), s.index(slice(0, 1)), system)

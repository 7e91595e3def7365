"""Likelihood steps on a covariance factor: the closed-form gradient, and that the steps
make the classical row better than the start they are given."""

import pytest
import torch

from ris_model.config import load_config
from ris_model.estimators.covariance import r_bp
from ris_model.estimators.covariance_ml import (
    Snapshots,
    at_snapshot_scale,
    dominant_factor,
    likelihood_step,
    nll_and_gradient,
    r_ml,
    refine_factor,
)
from ris_model.physics import simulate


def _scenes(preset="tiny", n=6, seed=3, snr_db=10.0):
    cfg = load_config(preset)
    return cfg.system, simulate(cfg.system, n, seed=seed, snr_db=snr_db)


def _snapshots(scenes, dtype=torch.complex128):
    return Snapshots.whitened(scenes.y.to(dtype), scenes.codes.to(dtype), scenes.H.to(dtype),
                              scenes.noise_var.double())


def test_gradient_is_the_conjugate_wirtinger_derivative_of_the_nll():
    _, scenes = _scenes()
    snaps = _snapshots(scenes)
    F = torch.randn(len(scenes), 16, 2, dtype=torch.complex128, requires_grad=True)
    nll, grad = nll_and_gradient(F, snaps)
    (autograd,) = torch.autograd.grad(nll.sum(), F)
    torch.testing.assert_close(autograd, 2 * grad)  # torch's convention: 2 dL/d conj(z)


def test_nll_matches_the_gaussian_density_written_out():
    _, scenes = _scenes()
    snaps = _snapshots(scenes)
    F = torch.randn(len(scenes), 16, 2, dtype=torch.complex128)
    G = snaps.images(F)
    C = G @ G.mH + torch.eye(G.shape[-2], dtype=G.dtype)
    y = snaps.y.unsqueeze(-1)
    direct = (torch.logdet(C).real + (y.mH @ torch.linalg.solve(C, y)).real[..., 0, 0]).sum(-1)
    torch.testing.assert_close(nll_and_gradient(F, snaps)[0], direct)


def test_back_is_the_adjoint_of_images():
    _, scenes = _scenes()
    snaps = _snapshots(scenes)
    F = torch.randn(len(scenes), 16, 3, dtype=torch.complex128)
    X = torch.randn(len(scenes), scenes.y.shape[1], scenes.y.shape[2], 3, dtype=torch.complex128)
    lhs = (snaps.images(F).conj() * X).sum((1, 2, 3))
    rhs = (F.conj() * snaps.back(X)).sum((1, 2))
    torch.testing.assert_close(lhs, rhs)


def test_snapshot_scale_does_not_depend_on_the_start_scale():
    _, scenes = _scenes()
    snaps = _snapshots(scenes)
    F = torch.randn(len(scenes), 16, 2, dtype=torch.complex128)
    torch.testing.assert_close(at_snapshot_scale(F, snaps), at_snapshot_scale(1e3 * F, snaps))


def test_a_small_step_lowers_the_nll_of_every_scene():
    _, scenes = _scenes(n=8)
    snaps = _snapshots(scenes)
    start = at_snapshot_scale(dominant_factor(r_bp(scenes.y, scenes.codes, scenes.H).to(torch.complex128), 2), snaps)
    before, _ = nll_and_gradient(start, snaps)
    after, _ = nll_and_gradient(likelihood_step(start, snaps, 0.01), snaps)
    assert (after < before).all()


def test_a_zero_step_changes_nothing():
    _, scenes = _scenes()
    snaps = _snapshots(scenes)
    F = torch.randn(len(scenes), 16, 2, dtype=torch.complex128)
    torch.testing.assert_close(refine_factor(F, snaps, [0.0, 0.0]), at_snapshot_scale(F, snaps))


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_the_steps_bring_r_bp_closer_to_the_true_covariance(preset):
    system, scenes = _scenes(preset, n=16, seed=11)
    start = r_bp(scenes.y, scenes.codes, scenes.H).to(torch.complex128)
    refined = r_ml(scenes.y, scenes.codes, scenes.H, scenes.noise_var, system.k_max, start=start)
    R = scenes.R.to(torch.complex128)

    def nmse(est):
        return ((est - R).abs().square().sum((-1, -2)) / R.abs().square().sum((-1, -2))).mean()

    assert refined.dtype == scenes.y.dtype
    assert torch.diagonal(refined, dim1=-2, dim2=-1).real.sum(-1).allclose(
        torch.full((16,), float(system.n_elements)), rtol=1e-4)
    assert nmse(refined.to(torch.complex128)) < 0.8 * nmse(start)


def test_r_ml_refuses_a_negative_step_count():
    system, scenes = _scenes()
    with pytest.raises(ValueError, match="steps must be >= 0"):
        r_ml(scenes.y, scenes.codes, scenes.H, scenes.noise_var, 2, start=scenes.R, steps=-1)


def test_a_factor_with_no_energy_stays_zero_and_passes_no_gradient_through_the_steps():
    _, scenes = _scenes()
    snaps = _snapshots(scenes)
    F = torch.zeros(len(scenes), 16, 2, dtype=torch.complex128, requires_grad=True)
    out = refine_factor(F, snaps, [0.1, 0.1])
    assert out.abs().max() == 0
    (grad,) = torch.autograd.grad((out.abs().square().sum() + out.real.sum()), F)
    assert torch.isfinite(grad).all() and grad.abs().max() <= 1.0  # no 1 / sqrt(tiny) amplification

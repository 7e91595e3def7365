import dataclasses

import pytest
import torch

from ris_model.config import load_config
from ris_model.estimators import ls_ridge, r_bp, r_ls
from ris_model.physics import simulate

TINY = load_config("tiny").system


@pytest.fixture(scope="module")
def tiny_scenes():
    return simulate(TINY, 3, seed=11, snr_db=15.0, dtype=torch.complex128)


def _nmse(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (est - ref).abs().square().sum((-1, -2)) / ref.abs().square().sum((-1, -2))


def _hermitian_trace_n(R: torch.Tensor, n: int) -> None:
    assert torch.allclose(R, R.mH, atol=1e-6)
    trace = torch.diagonal(R, dim1=-2, dim2=-1).sum(-1)
    assert torch.allclose(trace.real, torch.full_like(trace.real, float(n)), rtol=1e-5)
    assert trace.imag.abs().max() < 1e-5


def test_r_ls_matches_an_explicit_kronecker_least_squares(tiny_scenes):
    # Independent route: stack vec(Phi_l R Phi_l^H) = (Phi_l kron conj Phi_l) vec(R) and solve
    # the ridge problem as one augmented least-squares system, scene by scene.
    s = tiny_scenes
    est = r_ls(s.y, s.codes, s.H, s.noise_var, ridge_scale=0.1)
    n, m, L = TINY.n_elements, TINY.bs_antennas, TINY.snapshots
    for b in range(len(s)):
        rows, rhs = [], []
        for l in range(L):
            phi = s.H[b] * s.codes[b, l]
            rows.append(torch.kron(phi, phi.conj()))
            S = torch.outer(s.y[b, l], s.y[b, l].conj()) - s.noise_var[b] * torch.eye(m, dtype=phi.dtype)
            rhs.append(S.reshape(-1))
        lam = 0.1 * L * s.H[b].abs().square().sum() ** 2 / n**2
        big = torch.cat(rows + [lam.sqrt() * torch.eye(n * n, dtype=phi.dtype)])
        target = torch.cat(rhs + [torch.zeros(n * n, dtype=phi.dtype)])
        x = torch.linalg.lstsq(big, target).solution.reshape(n, n)
        x = x * n / torch.trace(x).real
        assert torch.allclose(est[b], x, atol=1e-8), b


def test_cg_agrees_with_the_exact_solve(tiny_scenes):
    s = tiny_scenes
    exact = r_ls(s.y, s.codes, s.H, s.noise_var, method="exact")
    cg, info = r_ls(s.y, s.codes, s.H, s.noise_var, method="cg", tol=1e-11, return_info=True)
    assert info.method == "cg" and (info.residual <= 1e-11).all()
    assert torch.allclose(exact, cg, atol=1e-8)


def test_both_estimates_are_hermitian_with_trace_n(tiny_scenes):
    s = tiny_scenes
    for R in (r_ls(s.y, s.codes, s.H, s.noise_var), r_bp(s.y, s.codes, s.H)):
        _hermitian_trace_n(R, TINY.n_elements)
    small = load_config("small").system
    s2 = simulate(small, 2, seed=1, snr_db=5.0)
    for R in (r_ls(s2.y, s2.codes, s2.H, s2.noise_var), r_bp(s2.y, s2.codes, s2.H)):
        assert R.dtype == torch.complex64
        _hermitian_trace_n(R, small.n_elements)


def test_r_bp_equals_per_snapshot_pseudo_inverses(tiny_scenes):
    s = tiny_scenes
    reg = 1e-2
    got = r_bp(s.y, s.codes, s.H, reg=reg)
    m = TINY.bs_antennas
    for b in range(len(s)):
        eps = reg * s.H[b].abs().square().sum() / m
        acc = torch.zeros(TINY.n_elements, TINY.n_elements, dtype=s.H.dtype)
        for l in range(TINY.snapshots):
            phi = s.H[b] * s.codes[b, l]  # H diag(c_l)
            pinv = phi.mH @ torch.linalg.inv(phi @ phi.mH + eps * torch.eye(m, dtype=phi.dtype))
            z = pinv @ s.y[b, l]
            acc += torch.outer(z, z.conj())
        acc = acc * TINY.n_elements / torch.trace(acc).real
        assert torch.allclose(got[b], acc, atol=1e-9)


def test_estimates_do_not_depend_on_the_channel_scale(tiny_scenes):
    # The ridge is relative to the operator and both results are trace-normalised, so
    # scaling H (and with it y and the noise) by any factor changes nothing.
    s = tiny_scenes
    c = 7.5
    for scaled, plain in (
        (r_ls(c * s.y, s.codes, c * s.H, c**2 * s.noise_var), r_ls(s.y, s.codes, s.H, s.noise_var)),
        (r_bp(c * s.y, s.codes, c * s.H), r_bp(s.y, s.codes, s.H)),
    ):
        assert torch.allclose(scaled, plain, atol=1e-8)
    assert torch.allclose(ls_ridge(c * s.H, 10, 0.1), c**4 * ls_ridge(s.H, 10, 0.1))


def test_r_ls_is_consistent_and_r_bp_is_not():
    # At high SNR the least-squares fit's error falls like 1/L (each snapshot adds L M^2
    # equations for N^2 unknowns); back-projection keeps its bias whatever L is, because
    # Phi_l^+ Phi_l is a projector, not the identity. 16x the snapshots: R_ls's NMSE must
    # drop several-fold, R_bp's must not move.
    nmse = {}
    for snapshots in (250, 4000):
        system = dataclasses.replace(TINY, snapshots=snapshots)
        s = simulate(system, 4, seed=5, snr_db=30.0, k=2, dtype=torch.complex128)
        nmse[snapshots] = (_nmse(r_ls(s.y, s.codes, s.H, s.noise_var), s.R).mean(),
                           _nmse(r_bp(s.y, s.codes, s.H), s.R).mean())
    (ls_few, bp_few), (ls_many, bp_many) = nmse[250], nmse[4000]
    assert ls_many < 0.3 * ls_few
    assert 0.8 < bp_many / bp_few < 1.25
    assert ls_many < 0.25 * bp_many


def test_bad_arguments_name_the_value(tiny_scenes):
    s = tiny_scenes
    with pytest.raises(ValueError, match="method='qr'"):
        r_ls(s.y, s.codes, s.H, s.noise_var, method="qr")
    with pytest.raises(ValueError, match="disagree"):
        r_bp(s.y, s.codes[:, :-1], s.H)


@pytest.mark.parametrize("scale", [1e-12, 1e20])
def test_r_bp_in_complex64_does_not_depend_on_the_snapshots_scale(scale):
    small = load_config("small").system
    s = simulate(small, 4, seed=2, snr_db=10.0)  # complex64, the training features' precision
    plain = r_bp(s.y, s.codes, s.H)
    scaled = r_bp(s.y * scale, s.codes, s.H)
    assert plain.dtype == scaled.dtype == torch.complex64
    torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-5)

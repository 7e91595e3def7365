import math

import pytest
import torch

from ris_model.config import load_config
from ris_model.estimators import Estimates, search_grid
from ris_model.estimators.snapshot_fit.fit import fit_and_localize
from ris_model.estimators.snapshot_fit.likelihood import SnapshotLikelihood, SourceFit, refine_sources
from ris_model.estimators.snapshot_fit.relocate import (
    best_addition,
    drop_costs,
    keep_better,
    propose_moves,
    relocate_sources,
    residual_forms,
)
from ris_model.evaluation.metrics import match_sources
from ris_model.physics import simulate
from ris_model.physics.simulate import steering_matrix


def _with_one_source_misplaced(s, *, phi_deg: float = 40.0) -> Estimates:
    """The true sources, except that the last one of each scene sits ``phi_deg`` nearer the
    boresight than it is (or across it): the shape of MUSIC's gross errors, a peak on a
    sidelobe while a source goes unexplained."""
    phi, theta = s.phi.double().clone(), s.theta.double().clone()
    rows = torch.arange(len(s))
    last = s.k - 1
    shifted = phi[rows, last] - torch.sign(phi[rows, last]) * math.radians(phi_deg)
    phi[rows, last] = shifted.clamp(-math.radians(60.0), math.radians(60.0))
    zero = torch.zeros_like(phi)
    return Estimates(phi=torch.where(s.mask, phi, zero), theta=torch.where(s.mask, theta, zero), r=s.r.double(),
                     mask=s.mask, k=s.k, score=zero)


def _angle_errors_deg(est: Estimates, s) -> torch.Tensor:
    m = match_sources(est.phi, est.theta, est.r, est.mask, s.phi, s.theta, s.r, s.mask)
    return torch.as_tensor(m.angle).rad2deg()


@pytest.fixture(scope="module")
def misplaced():
    """Two-source tiny scenes at 20 dB with one source put on the wrong side, fitted locally."""
    system = load_config("tiny").system
    s = simulate(system, 12, seed=21, snr_db=20.0, k=2)
    start = _with_one_source_misplaced(s)
    return system, s, refine_sources(start, s, system, steps=100)


def test_the_local_fit_alone_cannot_repair_a_misplaced_source(misplaced):
    system, s, fit = misplaced
    errors = _angle_errors_deg(fit.estimates, s)
    assert (errors > 10.0).sum() >= len(s) // 2  # the premise of the moves below


def test_a_move_puts_the_misplaced_source_on_the_one_left_unexplained(misplaced):
    system, s, fit = misplaced
    moved = relocate_sources(fit, s, system, rounds=1, steps=100)
    errors = _angle_errors_deg(moved.estimates, s)
    before = _angle_errors_deg(fit.estimates, s)
    assert (errors < 1.0).float().mean() >= 0.9 > (before < 1.0).float().mean() + 0.3, errors
    assert (errors > 5.0).sum() <= 1
    assert (moved.nll <= fit.nll).all()


def _fitted_at_truth(n: int, seed: int, snr_db: float):
    """small scenes and the local fit started at their true sources: a fit with nothing to repair."""
    system = load_config("small").system
    s = simulate(system, n, seed=seed, snr_db=snr_db)
    truth = Estimates(phi=s.phi.double(), theta=s.theta.double(), r=s.r.double(), mask=s.mask, k=s.k,
                      score=torch.zeros_like(s.phi, dtype=torch.float64))
    return system, s, refine_sources(truth, s, system, steps=60)


def test_moves_never_raise_the_nll_and_leave_a_right_fit_alone():
    system, s, fit = _fitted_at_truth(6, seed=22, snr_db=20.0)
    moved = relocate_sources(fit, s, system, rounds=2, steps=60)
    assert (moved.nll <= fit.nll).all()
    assert (_angle_errors_deg(moved.estimates, s) < 0.5).all()
    assert torch.equal(moved.estimates.mask, s.mask)
    pad = ~s.mask
    assert (moved.estimates.phi[pad] == 0).all() and (moved.power[pad] == 0).all()


def test_zero_rounds_return_the_fit_unchanged(misplaced):
    system, s, fit = misplaced
    assert relocate_sources(fit, s, system, rounds=0) is fit
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        relocate_sources(fit, s, system, rounds=-1)


def test_the_misplaced_source_is_the_cheapest_to_drop(misplaced):
    system, s, fit = misplaced
    est = fit.estimates
    lik = SnapshotLikelihood.of(s, s.y.device)
    A = steering_matrix(system, est.phi, est.theta, None, est.mask)
    cost = drop_costs(lik, A, fit.power, est.mask, fit.nll)
    # slot-wise: the fixture misplaced slot 1 of every scene (K = 2 throughout)
    off = torch.hypot(est.phi[:, 1] - s.phi[:, 1].double(), est.theta[:, 1] - s.theta[:, 1].double())
    still_off = off > math.radians(10)
    assert still_off.sum() >= len(s) // 2
    assert (cost.argmin(-1)[still_off] == 1).float().mean() >= 0.8  # a 4 x 4 aperture's sidelobes are wide
    assert (cost[est.mask] > 0).all()

    padded = Estimates(phi=torch.cat([est.phi, torch.zeros(len(s), 1, dtype=est.phi.dtype)], 1),
                       theta=torch.cat([est.theta, torch.zeros(len(s), 1, dtype=est.theta.dtype)], 1),
                       r=est.r, mask=torch.cat([est.mask, torch.zeros(len(s), 1, dtype=torch.bool)], 1),
                       k=est.k, score=est.score)
    A3 = steering_matrix(system, padded.phi, padded.theta, None, padded.mask)
    power3 = torch.cat([fit.power, torch.zeros(len(s), 1, dtype=fit.power.dtype)], 1)
    assert torch.isinf(drop_costs(lik, A3, power3, padded.mask, fit.nll)[:, -1]).all()


def test_the_grid_score_finds_a_lone_source_and_honours_the_exclusion():
    system = load_config("small").system
    s = simulate(system, 5, seed=23, snr_db=15.0, k=1, dtype=torch.complex128)
    lik = SnapshotLikelihood(s.y, s.codes, s.H, s.noise_var.double())
    nothing = torch.zeros(len(s), 1, dtype=torch.float64)
    A = steering_matrix(system, s.phi[:, :1].double(), s.theta[:, :1].double(), s.r[:, :1].double())
    Z, W = residual_forms(lik, A, nothing)  # no source held: the whole signal is unexplained
    grid = search_grid(system, step_deg=2.0)
    _, n_phi, n_theta = grid.shape

    def where(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rest = point % (n_phi * n_theta)
        return grid.phi[rest // n_theta], grid.theta[rest % n_theta]

    point, gain = best_addition(Z, W, grid, system.snapshots)
    phi, theta = where(point)
    off = torch.hypot(phi - s.phi[:, 0].double(), theta - s.theta[:, 0].double()).rad2deg()
    assert (off < 2.0).all() and (gain > 0).all()

    radius = math.radians(10.0)
    far, far_gain = best_addition(Z, W, grid, system.snapshots, away_from=(s.phi[:, 0], s.theta[:, 0]), radius=radius)
    phi, theta = where(far)
    assert (torch.hypot(phi - s.phi[:, 0].double(), theta - s.theta[:, 0].double()) > radius).all()
    assert (far_gain < gain).all()


def test_fit_and_localize_with_moves_repairs_what_the_local_fit_leaves(misplaced):
    system, s, _ = misplaced
    start = _with_one_source_misplaced(s)
    local = fit_and_localize(start, s, system, steps=100, moves=0)
    moved = fit_and_localize(start, s, system, steps=100, moves=1)
    assert (_angle_errors_deg(moved, s) < 1.0).float().mean() > (_angle_errors_deg(local, s) < 1.0).float().mean() + 0.3


@pytest.fixture(scope="module")
def misplaced_near():
    """Three-source small (near-field) scenes at 10 dB, the last source put on the wrong side
    at the wrong range, fitted locally."""
    system = load_config("small").system
    s = simulate(system, 8, seed=24, snr_db=10.0, k=3)
    start = _with_one_source_misplaced(s)
    rows = torch.arange(len(s))
    r = start.r.clone()
    r[rows, s.k - 1] = torch.where(r[rows, s.k - 1] > 3.0, 1.5, 8.0).double()
    start = Estimates(phi=start.phi, theta=start.theta, r=r, mask=start.mask, k=start.k, score=start.score)
    return system, s, refine_sources(start, s, system, steps=100)


def _likelihood(s) -> SnapshotLikelihood:
    return SnapshotLikelihood.of(s, s.y.device)


def test_moves_repair_near_field_scenes_range_included(misplaced_near):
    system, s, fit = misplaced_near
    before = _angle_errors_deg(fit.estimates, s)
    assert (before > 10.0).sum() >= len(s) // 2
    moved = relocate_sources(fit, s, system, rounds=2, steps=100)
    m = match_sources(moved.estimates.phi, moved.estimates.theta, moved.estimates.r, moved.estimates.mask,
                      s.phi, s.theta, s.r, s.mask)
    assert (torch.as_tensor(m.angle).rad2deg() < 1.0).float().mean() >= 0.9
    true_r = s.r.double()[torch.as_tensor(m.scene), torch.as_tensor(m.true_index)]
    assert (torch.as_tensor(m.r_err).abs() / true_r).median() < 0.2


def test_a_right_fit_promises_no_move():
    system, s, fit = _fitted_at_truth(8, seed=25, snr_db=10.0)
    _, promising = propose_moves(fit, _likelihood(s), system, search_grid(system, step_deg=2.0), math.radians(10))
    assert not promising.any()


def test_the_moved_source_sits_on_the_best_grid_point_outside_the_radius(misplaced_near):
    system, s, fit = misplaced_near
    lik, grid, radius = _likelihood(s), search_grid(system, step_deg=2.0), math.radians(10.0)
    moved, promising = propose_moves(fit, lik, system, grid, radius)
    assert promising.sum() >= len(s) // 2
    est = fit.estimates
    A = steering_matrix(system, est.phi, est.theta, est.r, est.mask)
    slot = drop_costs(lik, A, fit.power, est.mask, fit.nll).argmin(-1)
    rows = torch.arange(len(s))
    kept = fit.power.clone()
    kept[rows, slot] = 0.0
    Z, W = residual_forms(lik, A, kept)
    a = grid.steering.to(torch.complex128)  # (P, G_phi, G_theta, N), scored by brute force
    t = (torch.einsum("pijn,bnm,pijm->bpij", a.conj(), Z, a) / torch.einsum("pijn,bnm,pijm->bpij", a.conj(), W, a)).real
    pp, tt = torch.meshgrid(grid.phi, grid.theta, indexing="ij")
    near = torch.hypot(pp - est.phi[rows, slot, None, None], tt - est.theta[rows, slot, None, None]) <= radius
    best = t.masked_fill(near[:, None], -math.inf).flatten(1).argmax(-1)
    expected = a.reshape(-1, a.shape[-1])[best]  # (B, N)
    got = steering_matrix(system, moved.phi, moved.theta, moved.r)[rows, slot].to(torch.complex128)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    others = torch.ones_like(est.mask).index_put_((rows, slot), torch.tensor(False))
    assert torch.equal(moved.phi[others], est.phi[others]) and torch.equal(moved.r[others], est.r[others])


def test_keep_better_takes_only_lower_likelihoods(misplaced):
    _, s, fit = misplaced
    idx = torch.tensor([0, 3, 5])
    sub = fit.estimates.index(idx)
    shifted = Estimates(phi=sub.phi + 0.1, theta=sub.theta, r=sub.r, mask=sub.mask, k=sub.k, score=sub.score)
    nll = fit.nll[idx] + torch.tensor([-1.0, 1.0, -2.0], dtype=fit.nll.dtype)
    kept, changed = keep_better(fit, SourceFit(shifted, fit.power[idx], nll), idx)
    assert changed.tolist() == [0, 5]
    assert torch.equal(kept.nll[[0, 5]], nll[[0, 2]]) and kept.nll[3] == fit.nll[3]
    assert torch.equal(kept.estimates.phi[[0, 5]], shifted.phi[[0, 2]])
    assert torch.equal(kept.estimates.phi[3], fit.estimates.phi[3])
    untouched = torch.tensor([i for i in range(len(s)) if i not in (0, 5)])
    assert torch.equal(kept.estimates.phi[untouched], fit.estimates.phi[untouched])


def test_only_scenes_whose_fit_moved_are_proposed_again(misplaced, monkeypatch):
    """A refused move would be proposed again from the same fit; only changed scenes are."""
    import ris_model.estimators.snapshot_fit.relocate as relocate

    system, s, fit = misplaced
    proposed: list[int] = []
    real_propose = relocate.propose_moves

    def propose(fit_part, *args):
        proposed.append(len(fit_part.estimates))
        return real_propose(fit_part, *args)

    monkeypatch.setattr(relocate, "propose_moves", propose)
    moved = relocate.relocate_sources(fit, s, system, rounds=3, steps=100)
    changed = int((moved.nll < fit.nll).sum())
    assert proposed[0] == len(s) and proposed[1] == changed and len(proposed) <= 3

    proposed.clear()  # every refit refused: one round of proposals, however many rounds are allowed

    def worse_refit(start, scenes, *args, **kwargs):
        return SourceFit(start, torch.zeros_like(start.phi, dtype=torch.float64),
                         torch.full((len(start),), math.inf, dtype=torch.float64))

    monkeypatch.setattr(relocate, "refine_sources", worse_refit)
    again = relocate.relocate_sources(moved, s, system, rounds=3, steps=100)
    assert len(proposed) == 1 and torch.equal(again.nll, moved.nll)

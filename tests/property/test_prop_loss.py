"""HybridLoss under every weight config a run could meet: it is positive, each switched-on
term carries signal and gradient, it is 0 exactly at the target, and it sees the set of
true sources only (not their order, not the padding slots).

Weights here are drawn with non-zero values >= 1e-3 (zero stays possible): the loss runs
in float32, where a weight far below that is a different question, kept apart in
test_prop_weight_underflow.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _prop_configs import MAX_EPOCH, POOL, PRIMARY, TERMS, trial_configs
from hypothesis import given
from hypothesis import strategies as st

from ris_model.config import LossWeights
from ris_model.loss import CovPrediction, HybridLoss
from ris_model.training.weights import WeightPlan

pytestmark = pytest.mark.property

W_MIN = 1e-3
BATCH = 8
seeds = st.integers(0, 2**31 - 1)
epochs = st.integers(0, MAX_EPOCH + 1)
batches = st.lists(st.integers(0, POOL - 1), min_size=2, max_size=BATCH, unique=True)  # indices into the pool


def _take(scenes, idx, dtype=None):
    b = scenes.take(torch.tensor(idx))
    if dtype is None:
        return b
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    return b.__class__(rbp=b.rbp.to(dtype), snr_db=b.snr_db.to(real), R=b.R.to(dtype), phi=b.phi.to(real),
                       theta=b.theta.to(real), r=b.r.to(real), mask=b.mask, y=b.y.to(dtype), codes=b.codes.to(dtype),
                       H=b.H.to(dtype))


def _random_factor(seed, shape, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


# ---------------------------------------------------------------- positive, shares
@given(trial_configs(min_weight=W_MIN), epochs, seeds, batches)
def test_random_prediction_gives_a_finite_positive_total_and_a_share_per_on_term(scenes, drawn, epoch, seed, idx):
    weights, _ = WeightPlan(drawn.cfg).at_epoch(epoch)
    batch = _take(scenes, idx)
    n, k = batch.R.shape[-1], drawn.cfg.system.k_max
    pred = CovPrediction(_random_factor(seed, (len(idx), n, k)))
    out = HybridLoss(weights, system=drawn.cfg.system)(pred, batch.R, batch.phi, batch.theta, batch.r, batch.mask)

    total = float(out.total)
    assert math.isfinite(total) and total > 0
    shares = {t: float(w * out.terms[t]) for t, w in weights.as_dict().items()}
    assert total == pytest.approx(sum(shares.values()), rel=1e-5)
    for term, w in weights.as_dict().items():
        if w > 0:
            assert math.isfinite(shares[term]) and shares[term] > 0, (term, w, float(out.terms[term]))


# ---------------------------------------------------------- zero exactly at target
def _nmse(F: np.ndarray, R: np.ndarray) -> float:
    """cov's definition, computed independently: NMSE of trace-N-normalised covariances."""
    n = R.shape[-1]
    Rh = F @ np.conj(np.swapaxes(F, -1, -2))
    Rh = Rh * (n / np.trace(Rh, axis1=-2, axis2=-1).real)[:, None, None]
    Rt = R * (n / np.trace(R, axis1=-2, axis2=-1).real)[:, None, None]
    num = np.linalg.norm(Rh - Rt, axis=(-2, -1)) ** 2
    return float(np.mean(num / np.linalg.norm(Rt, axis=(-2, -1)) ** 2))


@given(drawn=trial_configs(min_weight=W_MIN), epoch=epochs, idx=batches, seed=seeds, delta=st.floats(1e-4, 1.0),
       scale=st.floats(0.1, 10.0))
def test_primary_only_loss_is_zero_exactly_at_the_target_and_only_there(tiny, scenes, drawn, epoch, idx, seed,
                                                                         delta, scale):
    w = getattr(WeightPlan(drawn.cfg).at_epoch(epoch)[0], PRIMARY)  # the run's primary; the others off
    weights = LossWeights(**{t: (w if t == PRIMARY else 0.0) for t in TERMS})
    loss = HybridLoss(weights, system=tiny.system)
    b = _take(scenes, idx, torch.complex128)
    exact = CovPrediction.from_covariance(b.R, tiny.system.k_max).factor  # (B, N, K)

    def total(factor):
        return float(loss(CovPrediction(factor), b.R, b.phi, b.theta, b.r, b.mask).total)

    tol = 1e-10 * w  # float64: the eigen-factor reproduces R to ~1e-15
    assert total(exact) <= tol
    # R̂ = N·FFᴴ/tr(FFᴴ) does not see a rescaled factor or rotated columns: still the target, still 0.
    q, _ = torch.linalg.qr(_random_factor(seed + 1, (len(idx), exact.shape[-1], exact.shape[-1]), torch.complex128))
    assert total(scale * exact @ q) <= tol
    # Anything that moves R̂ off R costs exactly w times the independent NMSE, which is > 0.
    noise = _random_factor(seed, exact.shape, torch.complex128)
    moved = exact + delta * noise * exact.norm(dim=(-2, -1), keepdim=True) / noise.norm(dim=(-2, -1), keepdim=True)
    expected = _nmse(moved.numpy(), b.R.numpy())
    assert expected > 1e-12
    assert total(moved) > tol
    assert total(moved) == pytest.approx(w * expected, rel=1e-6)


# ------------------------------------------------------------------- gradients
@given(trial_configs(min_weight=W_MIN), epochs, batches)
def test_every_on_term_sends_gradient_to_the_factor_head(model, scenes, drawn, epoch, idx):
    weights, _ = WeightPlan(drawn.cfg).at_epoch(epoch)
    loss = HybridLoss(weights, system=drawn.cfg.system)
    b = _take(scenes, idx)
    pred = model(b.rbp, b.snr_db, b.snapshots)
    terms = loss.terms(pred, b.R, b.phi, b.theta, b.r, b.mask)
    params = [model.factor_head.weight, model.factor_head.bias, *model.encoder.parameters()]
    n_head = 2

    per_term = {}
    for term, w in weights.as_dict().items():
        if w == 0:
            continue
        grads = torch.autograd.grad(w * terms[term], params, retain_graph=True)
        assert all(torch.isfinite(g).all() for g in grads), term
        head = math.sqrt(sum(float(g.pow(2).sum()) for g in grads[:n_head]))
        trunk = math.sqrt(sum(float(g.pow(2).sum()) for g in grads[n_head:]))
        assert head > 0 and trunk > 0, (term, w, head, trunk)
        per_term[term] = grads
    # The gradient of the weighted total is the sum of the per-term gradients: no term is
    # lost (or counted twice) between terms() and the weighted sum. Terms can pull against
    # each other, so float32 rounding is judged against the largest single-term gradient
    # (1e-4 of it: the unrolled likelihood steps put ten normalised steps between the head
    # and the loss; a lost term moves the sum by the whole of its gradient).
    total = loss(pred, b.R, b.phi, b.theta, b.r, b.mask).total
    g_total = torch.autograd.grad(total, params[:n_head])
    for i, g in enumerate(g_total):
        summed = sum(gs[i] for gs in per_term.values())
        scale = max(float(gs[i].abs().max()) for gs in per_term.values())
        assert float((g - summed).abs().max()) <= 1e-4 * scale


# ---------------------------------------------------------------- permutations
@given(trial_configs(), st.lists(st.permutations(range(3)), min_size=12, max_size=12),
       st.permutations(range(3)), seeds)
def test_loss_depends_on_the_set_of_sources_only(scenes_k3, drawn, label_perms, column_perm, seed):
    cfg, pool = scenes_k3
    weights, _ = WeightPlan(drawn.cfg).at_epoch(0)
    loss = HybridLoss(weights, system=cfg.system)
    b = _take(pool, list(range(len(pool))), torch.complex128)
    assert not b.mask.all()  # some scenes have padding slots, or this proves less than it says
    factor = _random_factor(seed, (len(pool), b.R.shape[-1], 3), torch.complex128)
    before = loss(CovPrediction(factor), b.R, b.phi, b.theta, b.r, b.mask)

    # Each scene lists its (true) sources in its own new order, padding slots included,
    # and the prediction lists its columns in another; the padding slots hold junk angles.
    order = torch.tensor(label_perms)  # (B, K)
    junk = _random_factor(seed + 1, b.phi.shape, torch.float64)
    def perm(x):
        return torch.gather(x, 1, order)
    phi = torch.where(b.mask, b.phi, junk)
    theta = torch.where(b.mask, b.theta, junk.flip(0))
    after = loss(CovPrediction(factor[..., list(column_perm)]), b.R, perm(phi), perm(theta), perm(b.r),
                 perm(b.mask))
    for term in TERMS:
        assert float(after.terms[term]) == pytest.approx(float(before.terms[term]), rel=1e-9, abs=1e-12), term
    assert float(after.total) == pytest.approx(float(before.total), rel=1e-9, abs=1e-12)

import pytest
import torch

from ris_model.batches import build_scenes
from ris_model.config import ConfigError, LossWeights, load_config
from ris_model.loss import CovPrediction, HybridLoss, noise_energy, self_test
from ris_model.model import CovarianceNet


@pytest.fixture(scope="module", params=["tiny", "small"])
def setup(request):
    cfg = load_config(request.param)
    scenes = build_scenes(cfg.system, 12, seed=3)
    loss = HybridLoss(LossWeights(cov=1.0, subspace=0.5, peak=0.5, ortho=0.1), system=cfg.system)
    return cfg, scenes, loss


def test_self_test_zero_at_target_and_one_at_zero(setup):
    cfg, s, loss = setup
    out = self_test(loss, s.R, s.phi, s.theta, s.r, s.mask, cfg.system.k_max)
    for term in LossWeights.terms():
        assert abs(out[f"{term}@target"]) < 1e-6, (term, out)
    assert out["cov@zero"] == pytest.approx(1.0, abs=1e-9)


def test_terms_are_informative_on_a_random_prediction(setup):
    cfg, s, loss = setup
    g = torch.Generator().manual_seed(0)
    n, k = cfg.system.n_elements, cfg.system.k_max
    factor = torch.randn(len(s), n, k, dtype=torch.complex64, generator=g)
    terms = loss.terms(CovPrediction(factor), s.R, s.phi, s.theta, s.r, s.mask)
    assert 0.5 < terms["cov"] < 2.0  # a random rank-K matrix is about as far from R as 0 is
    assert 0.3 < terms["subspace"] <= 1.0  # most of each source lies outside a random span
    assert 0.2 < terms["peak"] < 0.8  # a random spectrum is about flat around the truth
    assert terms["ortho"] > 1e-3


def test_loss_is_invariant_to_permuting_sources(setup):
    cfg, s, loss = setup
    factor = torch.randn(len(s), cfg.system.n_elements, cfg.system.k_max, dtype=torch.complex64,
                         generator=torch.Generator().manual_seed(1))
    pred = CovPrediction(factor)
    perm = torch.randperm(cfg.system.k_max, generator=torch.Generator().manual_seed(2))
    a = loss(pred, s.R, s.phi, s.theta, s.r, s.mask)
    b = loss(pred, s.R, s.phi[:, perm], s.theta[:, perm], s.r[:, perm], s.mask[:, perm])
    for name in a.terms:
        assert float(a.terms[name]) == pytest.approx(float(b.terms[name]), rel=1e-5, abs=1e-7)


def test_gradient_reaches_every_parameter(setup):
    cfg, s, loss = setup
    torch.manual_seed(0)
    model = CovarianceNet(cfg.system, cfg.model)
    out = loss(model(s.rbp, s.snr_db, s.snapshots), s.R, s.phi, s.theta, s.r, s.mask)
    out.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_noise_energy_matches_the_qr_projector():
    g = torch.Generator().manual_seed(4)
    factor = torch.randn(5, 16, 3, dtype=torch.complex128, generator=g)
    steering = torch.randn(5, 7, 16, dtype=torch.complex128, generator=g)
    q, _ = torch.linalg.qr(factor)
    inside = (q.mH @ steering.mT).abs().pow(2).sum(-2)
    expected = 1 - inside / steering.abs().pow(2).sum(-1)
    torch.testing.assert_close(noise_energy(factor, steering), expected, rtol=1e-9, atol=1e-9)


def test_noise_energy_gradient_is_finite_for_rank_deficient_factors():
    factor = torch.zeros(2, 16, 3, dtype=torch.complex128)
    factor[:, :, 0] = torch.randn(2, 16, dtype=torch.complex128)  # one live column, two empty slots
    factor.requires_grad_(True)
    steering = torch.randn(2, 4, 16, dtype=torch.complex128)
    noise_energy(factor, steering).sum().backward()
    assert torch.isfinite(factor.grad).all()


def test_the_seed_reports_construction_is_refused():
    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match="primary loss term 'cov'"):
        HybridLoss({"subspace": 0.05, "peak": 0.1, "ortho": 0.03}, system=cfg.system)
    with pytest.raises(ConfigError, match="primary loss weight 'cov' is 0"):
        HybridLoss(LossWeights(cov=0.0, subspace=0.05, peak=0.1, ortho=0.03), system=cfg.system)
    with pytest.raises(TypeError):
        HybridLoss(system=cfg.system)  # no weights at all


def test_weighted_total_is_the_weighted_sum(setup):
    cfg, s, loss = setup
    factor = torch.randn(len(s), cfg.system.n_elements, cfg.system.k_max, dtype=torch.complex64)
    out = loss(CovPrediction(factor), s.R, s.phi, s.theta, s.r, s.mask)
    w = loss.weights.as_dict()
    assert float(out.total) == pytest.approx(sum(w[t] * float(v) for t, v in out.terms.items()), rel=1e-6)


def _loss(cfg, **options):
    return HybridLoss(LossWeights(cov=1.0, subspace=0.5, peak=0.5, ortho=0.1), system=cfg.system, **options)


def test_count_columns_ignore_the_spare_columns(setup):
    cfg, s, _ = setup
    loss_all, loss_count = _loss(cfg), _loss(cfg, signal_columns="count")
    exact = CovPrediction.from_covariance(s.R.to(torch.complex128), cfg.system.k_max).factor
    spare = torch.randn(exact.shape, dtype=exact.dtype, generator=torch.Generator().manual_seed(6))
    keep = torch.arange(cfg.system.k_max) < s.mask.sum(-1, keepdim=True)
    # strongest-first exact columns plus junk in the spare slots: only the counted span is scored
    factor = torch.where(keep.unsqueeze(-2), exact, 1e-3 * spare)
    args = (s.R.to(torch.complex128), s.phi.double(), s.theta.double(), s.r.double(), s.mask)
    assert float(loss_count.terms(CovPrediction(factor), *args)["subspace"]) < 1e-6
    swapped = torch.where(keep.unsqueeze(-2), 1e-3 * spare, exact)  # the sources only in the spare slots
    if bool((~keep).any()):
        assert float(loss_count.terms(CovPrediction(swapped), *args)["subspace"]) > 0.1
        assert float(loss_all.terms(CovPrediction(swapped), *args)["subspace"]) < float(
            loss_count.terms(CovPrediction(swapped), *args)["subspace"])


def test_unknown_loss_options_are_refused():
    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match="signal_columns"):
        _loss(cfg, signal_columns="some")

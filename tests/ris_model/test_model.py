import pytest
import torch

from ris_model.config import load_config
from ris_model.model import CovarianceNet, count_parameters, dominant_eigen, hermitian_features

BUDGET = {"tiny": 300_000, "small": 2_000_000, "paper": 20_000_000}
HEAD_ONLY = ["model.unroll_steps=0"]  # tests of the trunk and head alone, fed a random R_bp


@pytest.mark.parametrize("preset", sorted(BUDGET))
def test_parameter_budget(preset):
    cfg = load_config(preset)
    with torch.device("meta"):
        model = CovarianceNet(cfg.system, cfg.model)
    assert count_parameters(model) <= BUDGET[preset]


def test_hermitian_features_determine_the_matrix():
    a = torch.randn(3, 5, 5, dtype=torch.complex64)
    R = a @ a.mH
    f = hermitian_features(R)
    assert f.shape == (3, 25)
    n = 5
    iu, ius = torch.triu_indices(n, n), torch.triu_indices(n, n, 1)
    rebuilt = torch.zeros_like(R)
    rebuilt[:, iu[0], iu[1]] = torch.complex(f[:, : iu.shape[1]], torch.zeros_like(f[:, : iu.shape[1]]))
    rebuilt[:, ius[0], ius[1]] += 1j * f[:, iu.shape[1]:]
    rebuilt = rebuilt + rebuilt.mH - torch.diag_embed(torch.diagonal(rebuilt, dim1=-2, dim2=-1))
    torch.testing.assert_close(rebuilt.real, R.real, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rebuilt.imag, R.imag, rtol=1e-5, atol=1e-5)


def test_prediction_is_a_trace_n_psd_low_rank_covariance():
    cfg = load_config("tiny", overrides=HEAD_ONLY)
    model = CovarianceNet(cfg.system, cfg.model)
    rbp = torch.randn(4, 16, 16, dtype=torch.complex64)
    pred = model(rbp @ rbp.mH, torch.zeros(4))
    R = pred.covariance
    n = cfg.system.n_elements
    torch.testing.assert_close(torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1), torch.full((4,), float(n)))
    evals = torch.linalg.eigvalsh(R)
    assert (evals > -1e-4).all()
    assert ((evals > 1e-4 * n).sum(-1) <= cfg.system.k_max).all()


def test_residual_factor_starts_from_the_dominant_subspace_of_the_input():
    cfg = load_config("tiny", overrides=[*HEAD_ONLY, "model.factor=residual", "model.residual_scale=0"])
    model = CovarianceNet(cfg.system, cfg.model)
    a = torch.randn(3, 16, 16, dtype=torch.complex64)
    rbp = a @ a.mH
    factor = model(rbp, torch.zeros(3)).factor
    k = cfg.system.k_max
    top = torch.linalg.eigh(rbp).eigenvectors[..., -k:]
    q = torch.linalg.qr(factor).Q
    torch.testing.assert_close((q.mH @ top).abs().square().sum(-2), torch.ones(3, k), rtol=1e-4, atol=1e-4)
    assert (factor[:, 0, :].imag.abs() < 1e-6).all() and (factor[:, 0, :].real >= 0).all()


def test_residual_correction_reaches_the_factor_and_trains():
    cfg = load_config("tiny", overrides=[*HEAD_ONLY, "model.factor=residual"])
    model = CovarianceNet(cfg.system, cfg.model)
    a = torch.randn(2, 16, 16, dtype=torch.complex64)
    model(a @ a.mH, torch.zeros(2)).factor.abs().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.factor_head.parameters())


def test_span_restricted_correction_stays_in_the_dominant_eigenvectors():
    cfg = load_config("small", overrides=[*HEAD_ONLY, "model.factor=residual", "model.residual_span=5",
                                          "model.residual_scale=1"])
    model = CovarianceNet(cfg.system, cfg.model)
    a = torch.randn(2, 64, 64, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    rbp = a @ a.mH
    factor = model(rbp, torch.zeros(2)).factor.detach()
    vecs, _ = dominant_eigen(rbp, 5)
    outside = factor - vecs @ (vecs.mH @ factor)
    assert outside.abs().max() < 1e-4 * factor.abs().max()
    assert model.factor_head.out_features == 2 * 5 * cfg.system.k_max


def _unrolled(steps=3, **extra):
    from ris_model.batches import build_scenes

    cfg = load_config("tiny", overrides=[f"model.unroll_steps={steps}", *[f"{k}={v}" for k, v in extra.items()]])
    return cfg, CovarianceNet(cfg.system, cfg.model), build_scenes(cfg.system, 4, seed=5)


def test_an_unrolled_network_asks_for_the_snapshots_by_name():
    _, model, batch = _unrolled()
    with pytest.raises(ValueError, match="snapshots"):
        model(batch.rbp, batch.snr_db)


def test_unrolled_step_sizes_learn_from_the_loss_and_stay_positive():
    from ris_model.loss import HybridLoss

    cfg, model, batch = _unrolled(steps=3, **{"model.unroll_sizes": "learned"})
    loss = HybridLoss(cfg.loss.weights, system=cfg.system)
    out = loss(model(batch.rbp, batch.snr_db, batch.snapshots), batch.R, batch.phi, batch.theta, batch.r, batch.mask)
    out.total.backward()
    grad = model.unroll.log_step.grad
    assert grad is not None and grad.shape == (3,) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (model.unroll.log_step.exp() > 0).all()
    assert model.encoder[0].weight.grad.abs().sum() > 0  # the head's start is trained through the steps


def test_unrolled_steps_of_size_zero_leave_the_heads_factor_unchanged_up_to_scale():
    import math

    cfg, model, batch = _unrolled(steps=2, **{"model.unroll_sizes": "learned"})
    plain = CovarianceNet(cfg.system, load_config("tiny", overrides=HEAD_ONLY).model)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("unroll.")})
    with torch.no_grad():
        model.unroll.log_step.fill_(-math.inf)
        unrolled = model(batch.rbp, batch.snr_db, batch.snapshots).covariance
        reference = plain(batch.rbp, batch.snr_db).covariance
    torch.testing.assert_close(unrolled, reference, rtol=1e-4, atol=1e-4)


def test_fixed_step_sizes_are_kept_in_the_checkpoint_but_never_trained():
    _, model, _ = _unrolled(steps=4)
    assert "unroll.log_step" in model.state_dict()
    assert all(p is not model.unroll.log_step for p in model.parameters())
    assert torch.allclose(model.unroll.log_step.exp(), torch.full((4,), 0.1))

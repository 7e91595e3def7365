"""The preflight gate on ris_model: passes a healthy config, fails each injected fault.

Every fault is a row of docs/failure-catalogue.md put into a real Trainer (through ``subject_hook``, after
the Trainer is built, as the origin pipeline's bugs happened at run time) or into the
config; the test asserts that the gate fails and that the failed checks are the ones
that name the fault, not merely that "something" failed.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from healthcheck.gate import GATE_FILE, read_verdict
from healthcheck.preflight import (
    Check,
    GateSubject,
    check_micro_overfit,
    check_optimizer_coverage,
    default_checks,
    run_checks,
)
from healthcheck.ris.gate_subject import gate_entry, run_ris_gate
from ris_model.config import load_config
from ris_model.loss import HybridLoss, trace_normalise
from ris_model.training.train import build_optimizer

# Small enough that one gate run takes about a second on one core.
FAST = {"model.width": 32, "train.batch_size": 16}


@pytest.fixture(autouse=True)
def _wandb_off(monkeypatch):
    monkeypatch.setenv("RIS_MODEL_WANDB", "off")


# The micro-overfit steps up to 100 times when a fault stops learning; the fault tests
# leave it out (it has its own tests) to keep this file fast.
WITHOUT_OVERFIT = [c for c in default_checks() if c is not check_micro_overfit]


def gate(hook=None, run_dir=None, checks=WITHOUT_OVERFIT, **overrides):
    return run_ris_gate(preset="tiny", overrides={**FAST, **overrides}, device="cpu", run_dir=run_dir,
                        subject_hook=hook, checks=checks)


def failed_names(verdict):
    return {c.name for c in verdict.failed}


@pytest.fixture(scope="module")
def healthy_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("healthy")


@pytest.fixture(scope="module")
def healthy(healthy_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RIS_MODEL_WANDB", "off")
        return gate(run_dir=healthy_dir, checks=None)


# ------------------------------------------------------------------------- healthy
def test_healthy_tiny_config_passes(healthy):
    assert healthy.passed, [c.to_dict() for c in healthy.failed]
    names = [c.name for c in healthy.checks]
    assert names == ["config", "loss_self_test", "loss_weights", "loss_at_init", "optimizer_coverage",
                     "lr_at_step0", "grad_reach", "term_grad_reach", "micro_overfit", "wandb_offline"]
    assert healthy.check("wandb_offline").verdict == "skipped"  # RIS_MODEL_WANDB=off


def test_healthy_numbers_agree_with_the_maths(healthy):
    cfg = load_config("tiny", overrides=FAST)
    n = cfg.system.n_elements
    init = healthy.check("loss_at_init").measured
    # NMSE of two trace-N PSD matrices lies in [0, 1 + N]; an untrained model is O(1).
    assert 0.1 < init["cov"] < 1 + n
    assert all(0 <= init[t] <= 1 for t in ("subspace", "peak", "ortho"))
    weights = cfg.loss.weights.as_dict()
    assert init["total"] == pytest.approx(sum(weights[t] * init[t] for t in weights), rel=1e-4)
    overfit = healthy.check("micro_overfit").measured
    assert overfit["final"] <= 0.5 * overfit["initial"] and overfit["steps"] <= 100
    lr = healthy.check("lr_at_step0").measured
    assert lr["lr_group0"] == pytest.approx(cfg.train.lr * cfg.train.warmup_start)


# ------------------------------------------------------------- the seed report's bug
def _drop_primary(subject):
    w = subject.trainer.loss_fn.weights
    subject.trainer.loss_fn.set_weights(dataclasses.replace(w, cov=0.0))


def test_primary_weight_dropped_at_run_time_fails_the_gate():
    verdict = gate(_drop_primary)
    assert not verdict.passed
    check = verdict.check("loss_weights")
    assert not check.passed and "'cov'" in check.detail and check.measured["w_cov"] == 0.0


def test_primary_weight_zero_in_a_config_built_around_validation_fails_the_config_check(tmp_path):
    cfg = load_config("tiny", overrides=FAST)
    bad = dataclasses.replace(cfg, loss=dataclasses.replace(
        cfg.loss, weights=dataclasses.replace(cfg.loss.weights, cov=0.0)))
    verdict = gate_entry(bad, tmp_path, "cpu")
    assert verdict["passed"] is False
    assert [c["name"] for c in verdict["checks"]] == ["config"]  # nothing is built from a bad config
    assert "cov" in verdict["checks"][0]["detail"]
    assert read_verdict(tmp_path) == verdict


class WithoutPrimary(HybridLoss):
    """Reports every weight, but its total leaves the primary term out ("built without it")."""

    def forward(self, pred, R, phi, theta, r, mask):
        out = super().forward(pred, R, phi, theta, r, mask)
        total = sum(out.weights[k] * v for k, v in out.terms.items() if k != "cov")
        return dataclasses.replace(out, total=total)


def _swap_loss(cls):
    def hook(subject):
        t = subject.trainer
        t.loss_fn = cls(t.loss_fn.weights, system=t.cfg.system)

    return hook


def test_loss_built_without_the_primary_term_fails_the_gate():
    verdict = gate(_swap_loss(WithoutPrimary))
    check = verdict.check("loss_weights")
    assert not check.passed and "weighted sum" in check.detail
    assert check.measured["total"] < check.measured["weighted_sum"]


# --------------------------------------------------------------- other catalogue rows
def test_a_param_group_at_lr_zero_fails_lr_at_step0():
    def hook(subject):
        subject.optimizer.param_groups[1]["lr"] = 0.0

    verdict = gate(hook)
    check = verdict.check("lr_at_step0")
    assert not check.passed and "group 1" in check.detail and "group 0" not in check.detail


def test_warmup_from_zero_fails_lr_at_step0():
    def hook(subject):
        t = subject.trainer
        t.scheduler = torch.optim.lr_scheduler.LambdaLR(t.optimizer, lambda step: min(1.0, step / 50))

    verdict = gate(hook)
    assert "lr_at_step0" in failed_names(verdict)
    assert verdict.check("lr_at_step0").measured["lr_group0"] == 0.0


def test_parameters_missing_from_the_optimizer_are_named():
    def hook(subject):
        t = subject.trainer
        t.optimizer = build_optimizer(t.model.encoder, lr=t.cfg.train.lr, weight_decay=0.0)

    verdict = gate(hook)
    check = verdict.check("optimizer_coverage")
    assert not check.passed
    assert "factor_head.* (all 2)" in check.detail  # the head's weight and bias, named as one module
    assert check.measured["missing"] == 2 and "encoder" not in check.detail
    # the Trainer's scheduler still drives the old optimizer: its schedule reaches nothing
    assert "another optimizer" in verdict.check("lr_at_step0").detail


def test_micro_overfit_fails_when_nothing_can_learn():
    def hook(subject):
        for group in subject.optimizer.param_groups:
            group["lr"] = 1e-12
        subject.scheduler.base_lrs = [1e-12] * len(subject.optimizer.param_groups)  # it rescales from these

    verdict = gate(hook, checks=[check_micro_overfit])
    check = verdict.check("micro_overfit")
    assert not check.passed and check.measured["steps"] == 100
    assert check.measured["ratio"] > 0.9


def test_a_detached_encoder_is_named_by_both_gradient_checks():
    def hook(subject):
        subject.model.encoder.register_forward_hook(lambda module, args, out: out.detach())

    verdict = gate(hook)
    assert {"grad_reach", "term_grad_reach"} <= failed_names(verdict)
    grad = verdict.check("grad_reach")
    n_encoder = sum(1 for _ in param_names_by_module()["encoder"])
    assert f"no gradient reaches encoder.* (all {n_encoder})" in grad.detail and "factor_head" not in grad.detail
    assert grad.measured["no_grad"] == n_encoder
    terms = verdict.check("term_grad_reach").detail
    assert terms.startswith("terms 'cov', 'subspace', 'peak', 'ortho' do not reach encoder.*")


def param_names_by_module():
    """Parameter names of the FAST tiny network, by top-level module (independent of the gate)."""
    from ris_model.model import CovarianceNet

    cfg = load_config("tiny", overrides=FAST)
    names: dict[str, list[str]] = {}
    for name, _ in CovarianceNet(cfg.system, cfg.model).named_parameters():
        names.setdefault(name.split(".")[0], []).append(name)
    return names


class EpsilonOnPrediction(HybridLoss):
    """NMSE with an epsilon added to the prediction only (catalogue row 7)."""

    def terms(self, pred, R, phi, theta, r, mask):
        out = super().terms(pred, R, phi, theta, r, mask)
        n = R.shape[-1]
        eye = torch.eye(n, dtype=pred.factor.dtype, device=R.device)
        R_hat = pred.covariance + 0.1 * eye
        R_true = trace_normalise(R.to(R_hat.dtype))
        out["cov"] = (torch.linalg.matrix_norm(R_hat - R_true).pow(2)
                      / torch.linalg.matrix_norm(R_true).pow(2)).mean()
        return out


def test_loss_not_zero_at_the_target_fails_the_self_test():
    verdict = gate(_swap_loss(EpsilonOnPrediction))
    check = verdict.check("loss_self_test")
    assert not check.passed and "cov@target" in check.detail
    assert "subspace@target" not in check.detail  # the other terms are still right
    # ||0.1 I||^2 / ||R||^2 with ||R||^2 >= N: positive and at most 0.01
    assert 0 < check.measured["cov@target"] <= 0.01 + 1e-9


class UnnormalisedPrediction(HybridLoss):
    """Compares a raw F Fᴴ with a trace-normalised target (catalogue row 6)."""

    def terms(self, pred, R, phi, theta, r, mask):
        out = super().terms(pred, R, phi, theta, r, mask)
        R_hat = 1e4 * (pred.factor @ pred.factor.mH)
        R_true = trace_normalise(R.to(R_hat.dtype))
        out["cov"] = (torch.linalg.matrix_norm(R_hat - R_true).pow(2)
                      / torch.linalg.matrix_norm(R_true).pow(2)).mean()
        return out


def test_an_unnormalised_covariance_fails_loss_at_init_and_the_self_test():
    verdict = gate(_swap_loss(UnnormalisedPrediction))
    assert {"loss_at_init", "loss_self_test"} <= failed_names(verdict)
    init = verdict.check("loss_at_init")
    n = load_config("tiny").system.n_elements
    assert init.measured["cov"] > 1 + n and "'cov'" in init.detail


# ------------------------------------------------------------ generic subject, gate.json
def test_the_checks_work_on_a_plain_pytorch_subject():
    """No ris_model: a linear regression whose second term is computed from a detached output."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def loss(batch):
        x, y = batch
        out = model(x)
        terms = {"mse": ((out - y) ** 2).mean(), "scale": out.detach().pow(2).mean()}
        weights = {"mse": 1.0, "scale": 0.1}
        return sum(weights[k] * v for k, v in terms.items()), terms, weights

    subject = GateSubject(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
                          batch=lambda: (x, y), loss=loss, primary="mse")
    results = {c.name: c for c in run_checks(subject)}
    assert results["loss_self_test"].verdict == "skipped"
    assert results["grad_reach"].passed and results["optimizer_coverage"].passed
    assert not results["term_grad_reach"].passed
    assert "term 'scale'" in results["term_grad_reach"].detail
    assert "term 'mse'" not in results["term_grad_reach"].detail


def test_a_partly_missing_module_is_named_parameter_by_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD([model[0].weight, model[0].bias, model[1].weight], lr=0.1)
    subject = GateSubject(model=model, optimizer=optimizer, batch=lambda: None, loss=lambda b: None)
    check = check_optimizer_coverage(subject)
    assert not check.passed and check.detail.endswith(": 1.bias") and check.measured["missing"] == 1


def test_micro_overfit_restores_the_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    subject = GateSubject(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                          batch=lambda: (x, y), loss=lambda b: _mse(model, b))
    check = check_micro_overfit(subject)
    assert check.measured["steps"] >= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _mse(model, batch):
    value = ((model(batch[0]) - batch[1]) ** 2).mean()
    return value, {"mse": value}, {"mse": 1.0}


def test_a_crashing_loss_is_a_failed_check_not_an_exception():
    model = torch.nn.Linear(3, 1)

    def loss(batch):
        raise RuntimeError("shapes (8, 3) and (4, 1) do not match")

    subject = GateSubject(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                          batch=lambda: None, loss=loss)
    results = run_checks(subject)
    crashed = [c for c in results if "RuntimeError" in c.detail]
    assert crashed and all(not c.passed for c in crashed)
    assert {c.name for c in results if c.passed} >= {"optimizer_coverage", "lr_at_step0"}


def test_gate_json_is_written_with_the_verdict(healthy, healthy_dir):
    verdict, tmp_path = healthy, healthy_dir
    blob = json.loads((tmp_path / GATE_FILE).read_text())
    cfg = load_config("tiny", overrides=FAST)
    assert blob["passed"] is True and blob["config_hash"] == cfg.hash
    assert [c["name"] for c in blob["checks"]] == [c.name for c in verdict.checks]
    for c in blob["checks"]:
        assert set(c) >= {"name", "passed", "verdict", "measured", "hint", "seconds"}
        assert all(isinstance(v, (int, float, str, bool)) for v in c["measured"].values())
    assert set(blob["versions"]) == {"python", "torch", "healthcheck"}
    assert blob["versions"]["torch"] == torch.__version__
    assert math.isfinite(blob["time"]) and blob["seconds"] > 0
    assert [p.name for p in tmp_path.iterdir()] == [GATE_FILE]  # no temp file left behind


def test_a_failed_gate_json_names_the_failed_checks(tmp_path):
    gate(_drop_primary, run_dir=tmp_path)
    blob = read_verdict(tmp_path)
    assert blob["passed"] is False
    assert [c["name"] for c in blob["checks"] if not c["passed"]] == ["loss_weights"]


def test_the_gate_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    gate(checks=[])  # the Trainer it builds seeds torch's generator with train.seed
    assert torch.equal(torch.rand(3), expected)


def test_check_rejects_an_unknown_verdict():
    with pytest.raises(ValueError, match="verdict"):
        Check("x", "ok")


def test_wandb_offline_check_logs_one_value(monkeypatch):
    from healthcheck.ris.gate_subject import check_wandb

    monkeypatch.setenv("RIS_MODEL_WANDB", "offline")
    check = check_wandb(load_config("tiny"))
    assert check.verdict == "passed", check.detail
    assert check.measured["started"] is True and check.measured["files"] > 0

"""Each registered fault breaks what its name says, checked on the built objects.

Cheap structural checks (no training): the learning rates, weights, parameters, hooks
and data a fault changes, read back after ``apply``. Step-k faults are checked one step
before k (no change) and at k (the change), by driving the trainer's own hooks.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch

from healthcheck.faults import Fault
from healthcheck.ris.faults import REGISTRY, STEP_K
from ris_model.batches import build_scenes
from ris_model.config import LossWeights, load_config
from ris_model.loss import self_test
from ris_model.training.train import Trainer

OVERRIDES = ["train.batch_size=16", "train.train_scenes=48", "train.val_scenes=16", "train.epochs=3",
             "train.warmup_steps=3", "model.width=32", "model.depth=2"]
BY_NAME = {f.name: f for f in REGISTRY}


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", overrides=OVERRIDES)


@pytest.fixture(scope="module")
def data(cfg):
    return build_scenes(cfg.system, 48, seed=0), build_scenes(cfg.system, 16, seed=1)


@pytest.fixture
def make(cfg, data, tmp_path):
    def build() -> Trainer:
        return Trainer(cfg, tmp_path / "run", device="cpu", train_scenes=data[0], val_scenes=data[1])
    return build


def first_batch(trainer):
    return trainer.train_data.take(slice(0, 16))


def train_step_loss(trainer, step: int, backward: bool = True):
    """One training forward (and backward) at ``step`` through the trainer's own hooks."""
    trainer.state.batches_seen = step
    trainer.net.train()
    trainer.callbacks.on_batch_start(trainer, step)
    trainer.optimizer.zero_grad(set_to_none=True)
    out = trainer._forward(first_batch(trainer))
    if backward:
        trainer.scaler.scale(out.total).backward()
    return out


def fault(trainer, name):
    BY_NAME[name].apply(trainer)
    return trainer


def params_of(module):
    return [p for p in module.parameters()]


# ------------------------------------------------------------------------ the checks
def check_primary_weight_zero(make):
    t = make()
    before = t.loss_fn.weights.as_dict()
    fault(t, "primary_weight_zero")
    after = t.loss_fn.weights.as_dict()
    assert after[LossWeights.PRIMARY] == 0.0
    assert {k: v for k, v in after.items() if k != LossWeights.PRIMARY} == \
        {k: v for k, v in before.items() if k != LossWeights.PRIMARY}
    assert train_step_loss(t, 0).weights[LossWeights.PRIMARY] == 0.0


def check_primary_weight_zero_mid(make):
    t = fault(make(), f"primary_weight_zero@{STEP_K}")
    w = t.loss_fn.weights.cov
    assert w > 0
    assert train_step_loss(t, STEP_K - 1).weights["cov"] == w
    assert train_step_loss(t, STEP_K).weights["cov"] == 0.0


def check_config_typo_fallback(make):
    t = fault(make(), "config_typo_fallback")
    assert t.loss_fn.weights.cov == 0.0
    assert "fallback" in t.weight_sources["cov"]
    assert t.weights_history[-1].term == "cov" and t.weights_history[-1].value == 0.0


def check_curriculum_jump(make):
    t = fault(make(), f"curriculum_jump@{STEP_K}")
    w = t.loss_fn.weights.subspace
    source = t.weight_sources["subspace"]
    train_step_loss(t, STEP_K - 1, backward=False)
    assert t.loss_fn.weights.subspace == w
    train_step_loss(t, STEP_K, backward=False)
    assert t.loss_fn.weights.subspace == pytest.approx(2.8 * w)
    # like the seed bug, the change bypasses the trainer: no source records it
    assert t.weight_sources["subspace"] == source and not source.startswith("curriculum")


def check_loss_eps_floor(make):
    t = make()
    b = first_batch(t)
    k = t.cfg.system.k_max
    clean = self_test(t.loss_fn, b.R, b.phi, b.theta, b.r, b.mask, k)["cov@target"]
    fault(t, "loss_eps_floor")
    floored = self_test(t.loss_fn, b.R, b.phi, b.theta, b.r, b.mask, k)["cov@target"]
    n = t.cfg.system.n_elements
    # at R_hat = R the term is ||I||^2 / ||R||^2 = N / ||R||^2 >= N / N^2 (trace-N PSD R)
    assert clean < 1e-9
    assert floored >= 1.0 / n - 1e-9


def check_unnormalised_target(make):
    t = make()
    tr_before = torch.diagonal(t.train_data.R, dim1=-2, dim2=-1).real.sum(-1)
    fault(t, "unnormalised_target")
    tr_after = torch.diagonal(t.train_data.R, dim1=-2, dim2=-1).real.sum(-1)
    assert torch.allclose(tr_after / tr_before, torch.full_like(tr_before, 1e-4))
    # a trace-N prediction against a trace-1e-4 N target: NMSE of order (1e4)^2 / N
    assert train_step_loss(t, 0, backward=False).terms["cov"].item() > 1e5


def _lr_after_steps(t, n):
    """The LR of every group at steps 0..n-1, stepping the scheduler as the trainer does."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no optimizer.step() here: torch warns about the order
        for _ in range(n):
            out.append([g["lr"] for g in t.optimizer.param_groups])
            t.scheduler.step()
    return out


def check_lr_x1000(make):
    ref = _lr_after_steps(make(), 5)
    t = fault(make(), "lr_x1000")
    got = _lr_after_steps(t, 5)
    assert [x for row in got for x in row] == pytest.approx([1000 * x for row in ref for x in row])


def check_lr_zero(make):
    t = fault(make(), "lr_zero")
    assert all(x == 0.0 for row in _lr_after_steps(t, 5) for x in row)


def check_warmup_from_zero(make):
    t = fault(make(), "warmup_from_zero")
    lrs = _lr_after_steps(t, t.steps_per_epoch + 1)
    assert all(x == 0.0 for row in lrs[:t.steps_per_epoch] for x in row)  # the whole first epoch
    assert all(x > 0.0 for x in lrs[t.steps_per_epoch])


def check_lr_tiny(make):
    t = fault(make(), "lr_tiny")
    lrs = _lr_after_steps(t, t.total_steps)
    assert all(0.0 < x < 1e-7 for row in lrs for x in row)


def check_group_lr_zero(make):
    ref = _lr_after_steps(make(), 4)
    t = fault(make(), "group_lr_zero")
    got = _lr_after_steps(t, 4)
    assert [row[1] for row in got] == [0.0] * 4
    assert [row[0] for row in got] == pytest.approx([row[0] for row in ref])


def check_optimizer_subset(make):
    t = fault(make(), "optimizer_subset")
    held = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in params_of(t.model.encoder))
    assert not any(id(p) in held for p in params_of(t.model.factor_head))
    assert t.scheduler.optimizer is t.optimizer


def check_optimizer_step_noop(make):
    t = fault(make(), "optimizer_step_noop")
    before = [p.detach().clone() for p in t.model.parameters()]
    train_step_loss(t, 0)
    t.optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, t.model.parameters()))


def check_step_gate_never_steps(make):
    t = fault(make(), "step_gate_never_steps")
    for norms in ({"encoder": 1.0, "factor_head": 2.0, "_total": 2.24}, {"encoder": 5.0, "factor_head": 5.0,
                                                                          "_total": 7.1}):
        assert t.callbacks.on_before_optimizer_step(t, {"grad_norm": norms})


def check_huge_weight_decay(make):
    t = fault(make(), "huge_weight_decay")
    assert t.optimizer.param_groups[0]["weight_decay"] * t.cfg.train.lr == pytest.approx(1.0)


def check_grad_clip_zero(make):
    t = fault(make(), "grad_clip_zero")
    assert 0.0 < t.cfg.train.grad_clip < 1e-20  # > 0, so the trainer clips: to a norm of ~0
    train_step_loss(t, 0)
    norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.train.grad_clip)
    assert norm > 0
    assert all(p.grad.abs().max() < 1e-20 for p in t.model.parameters())


def check_nan_grad(make):
    t = fault(make(), f"nan_grad@{STEP_K}")
    w = t.model.encoder[0].weight
    out = train_step_loss(t, STEP_K - 1)
    assert torch.isfinite(w.grad).all()
    out = train_step_loss(t, STEP_K)
    assert torch.isfinite(out.total)  # the loss stays finite, only the gradient is NaN
    assert torch.isnan(w.grad).all()


def check_amp_overflow(make):
    t = fault(make(), "amp_overflow")
    assert t.scaler.is_enabled()
    scale = t.scaler.get_scale()
    before = [p.detach().clone() for p in t.model.parameters()]
    train_step_loss(t, 0)
    t.scaler.unscale_(t.optimizer)
    assert torch.isinf(t.model.factor_head.bias.grad).all()
    t.scaler.step(t.optimizer)
    t.scaler.update()
    assert t.scaler.get_scale() == scale / 2  # GradScaler's backoff factor
    assert all(torch.equal(a, p) for a, p in zip(before, t.model.parameters()))


def check_head_detached(make):
    t = fault(make(), "head_detached")
    train_step_loss(t, 0)
    assert all(p.grad is None for p in params_of(t.model.encoder))
    assert all(p.grad is not None for p in params_of(t.model.factor_head))


def check_clamp_output(make):
    t = fault(make(), "clamp_output")
    seen = []
    t.model.factor_head.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    train_step_loss(t, 0, backward=False)
    out = seen[-1]
    assert out.abs().max() <= 0.02
    assert (out.abs() == 0.02).float().mean() > 0.5  # most outputs sit at a bound: zero gradient


def check_frozen_module(make):
    t = fault(make(), "frozen_module")
    held = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert all(not p.requires_grad and id(p) in held for p in params_of(t.model.encoder))
    train_step_loss(t, 0)
    assert all(p.grad is None for p in params_of(t.model.encoder))


def check_zero_init(make):
    t = fault(make(), "zero_init")
    linears = [m for m in t.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.abs().max() == 0 and m.bias.abs().max() == 0 for m in linears)


def check_dead_activation(make):
    t = fault(make(), "dead_activation")
    assert not any(isinstance(m, torch.nn.GELU) for m in t.model.encoder)
    seen = []
    t.model.encoder.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    train_step_loss(t, 0)
    assert torch.count_nonzero(seen[-1]) == 0
    first = t.model.encoder[0].weight.grad
    assert first is not None and first.abs().max() == 0


def check_nan_label(make):
    t = fault(make(), f"nan_label@{STEP_K}")
    assert torch.isfinite(train_step_loss(t, STEP_K - 1, backward=False).total)
    assert torch.isnan(train_step_loss(t, STEP_K, backward=False).total)
    t.net.eval()
    assert torch.isfinite(t._forward(first_batch(t)).total)  # validation is not poisoned


def check_inf_target(make):
    t = fault(make(), f"inf_target@{STEP_K}")
    assert torch.isfinite(train_step_loss(t, STEP_K - 1, backward=False).total)
    assert not torch.isfinite(train_step_loss(t, STEP_K, backward=False).total)


def check_labels_shuffled(make):
    t = fault(make(), "labels_shuffled")
    seen = []
    t.loss_fn.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))  # runs after the fault's
    b = first_batch(t)
    train_step_loss(t, 0, backward=False)
    R = seen[-1]
    match = [[torch.equal(R[i], b.R[j]) for j in range(len(b))] for i in range(len(b))]
    assert all(sum(row) == 1 for row in match)  # the same targets ...
    assert not all(match[i][i] for i in range(len(b)))  # ... in another order
    t.net.eval()
    t._forward(b)
    assert torch.equal(seen[-1], b.R)


def check_constant_targets(make):
    t = make()
    val_R = t.val_data.R.clone()
    fault(t, "constant_targets")
    d = t.train_data
    for name in ("R", "phi", "theta", "r", "mask"):
        x = getattr(d, name)
        assert torch.equal(x, x[:1].expand_as(x))
    assert len(torch.unique(d.rbp.real.flatten(1), dim=0)) == len(d)  # inputs still differ
    assert torch.equal(t.val_data.R, val_R)


def check_input_uninformative(make):
    t = fault(make(), "input_uninformative")
    for d in (t.train_data, t.val_data):
        for name in ("rbp", "y", "codes", "H"):  # all the network reads of a scene
            x = getattr(d, name)
            assert torch.equal(x, x[:1].expand_as(x)), name


CHECKS = {
    "primary_weight_zero": check_primary_weight_zero,
    f"primary_weight_zero@{STEP_K}": check_primary_weight_zero_mid,
    "config_typo_fallback": check_config_typo_fallback,
    f"curriculum_jump@{STEP_K}": check_curriculum_jump,
    "loss_eps_floor": check_loss_eps_floor,
    "unnormalised_target": check_unnormalised_target,
    "lr_x1000": check_lr_x1000,
    "lr_zero": check_lr_zero,
    "warmup_from_zero": check_warmup_from_zero,
    "lr_tiny": check_lr_tiny,
    "group_lr_zero": check_group_lr_zero,
    "optimizer_subset": check_optimizer_subset,
    "optimizer_step_noop": check_optimizer_step_noop,
    "step_gate_never_steps": check_step_gate_never_steps,
    "huge_weight_decay": check_huge_weight_decay,
    "grad_clip_zero": check_grad_clip_zero,
    f"nan_grad@{STEP_K}": check_nan_grad,
    "amp_overflow": check_amp_overflow,
    "head_detached": check_head_detached,
    "clamp_output": check_clamp_output,
    "frozen_module": check_frozen_module,
    "zero_init": check_zero_init,
    "dead_activation": check_dead_activation,
    f"nan_label@{STEP_K}": check_nan_label,
    f"inf_target@{STEP_K}": check_inf_target,
    "labels_shuffled": check_labels_shuffled,
    "constant_targets": check_constant_targets,
    "input_uninformative": check_input_uninformative,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_fault_changes_what_it_says(name, make):
    CHECKS[name](make)


def test_every_registered_fault_has_a_check():
    assert set(CHECKS) == set(BY_NAME)


def test_registry_covers_the_catalogue_and_the_families():
    assert len(REGISTRY) >= 20
    assert all(isinstance(f, Fault) and f.description and f.expected_codes for f in REGISTRY)
    assert set().union(*(f.catalogue_rows for f in REGISTRY)) == set(range(1, 15))
    assert {"loss", "weights", "optimizer", "schedule", "gradients", "data", "model", "numerics", "amp"} <= \
        {f.family for f in REGISTRY}


def test_step_k_faults_change_nothing_before_their_start(make):
    # a mid-run fault leaves the first steps of a run exactly as a healthy run's
    for f in REGISTRY:
        if f.start_step == 0:
            continue
        t = make()
        f.apply(t)
        ref = make()
        assert math.isclose(train_step_loss(t, f.start_step - 1, backward=False).total.item(),
                            train_step_loss(ref, f.start_step - 1, backward=False).total.item(), rel_tol=1e-6)


def test_fault_module_imports_neither_torch_nor_ris_model():
    code = ("import sys, healthcheck.faults; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ris_model')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

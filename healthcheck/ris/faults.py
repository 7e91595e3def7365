"""Faults for the ``ris_model`` Trainer: every row of docs/failure-catalogue.md, and more.

Each `Fault` here breaks a built ``ris_model.training.train.Trainer`` (before ``fit``) the way a
real bug would: the catalogue row it reproduces is in ``catalogue_rows``, the others are
mutation operators in the spirit of DeepCrime (learning rate, optimizer, loss, labels,
data, regularisation, activation, initialisation). Faults that start mid-run act at
`STEP_K` through a Trainer callback they add, so their detection latency is measured
from that step. Used by the detection benchmark (``benchmarks/detection.py``).

What the faults reach on a Trainer: ``model`` (top-level ``encoder``, ``factor_head``),
``loss_fn`` (``weights``, ``terms``), ``optimizer`` (AdamW, groups: matrices with weight
decay, vectors without), ``scheduler`` (LambdaLR, stepped per applied step), ``scaler``,
``train_data`` / ``val_data``, ``cfg`` and ``callbacks``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ris_model.config import LossWeights
from ris_model.loss import CovPrediction, trace_normalise
from ris_model.training.callbacks import Callback
from ris_model.training.train import build_optimizer

from ..faults import Fault, check_faults, clamp_output, detach_input, make_noop, poison_gradient, scale_lr

STEP_K = 10  # where mid-run faults start: inside the second epoch of the benchmark's runs


# --------------------------------------------------------------------------- plumbing
class _AtStep(Callback):
    """Calls ``action(trainer)`` before the forward pass of step ``step`` (once) or of every
    step from there on (``every``)."""

    def __init__(self, step: int, action: Callable[[Any], None], every: bool = False) -> None:
        self.step, self.action, self.every = step, action, every
        self.done = False

    def on_batch_start(self, trainer, batch_index):
        if trainer.state.batches_seen >= self.step and (self.every or not self.done):
            self.done = True
            self.action(trainer)


def _add_callback(trainer, callback: Callback) -> None:
    trainer.callbacks.callbacks.append(callback)


def _training_step(trainer, step: int | None = None) -> Callable[[], bool]:
    """True while the trainer is inside a training step (at ``step``, if given)."""
    return lambda: trainer.net.training and (step is None or trainer.state.batches_seen == step)


def _with_weight(trainer, **values: float) -> LossWeights:
    return dataclasses.replace(trainer.loss_fn.weights, **values)


def _rebuild_scheduler(trainer) -> None:
    """A fresh LambdaLR with the trainer's own schedule, for a rebuilt optimizer."""
    lr_lambdas = trainer.scheduler.lr_lambdas
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lr_lambdas[0])


def _override_cov(trainer, cov_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Replace the ``cov`` term of the live loss: ``cov_fn(R_hat, R)`` with R̂ trace N and R
    the target as the data holds it. The other terms are computed as before. Shadowing
    ``terms`` (not ``forward``) keeps the loss self-test seeing the broken term."""
    loss = trainer.loss_fn
    original = loss.terms

    def terms(pred: CovPrediction, R, phi, theta, r, mask):
        out = original(pred, R, phi, theta, r, mask)
        out["cov"] = cov_fn(pred.covariance, R.to(pred.factor.dtype))
        return out

    loss.terms = terms


def _fro2(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(x).pow(2)  # (B,)


def _replace_data(trainer, which: str, **fields: torch.Tensor) -> None:
    setattr(trainer, which, dataclasses.replace(getattr(trainer, which), **fields))


# ----------------------------------------------------------------------- the faults
def _primary_weight_zero(trainer) -> None:
    """The primary weight overwritten with 0 after the loss was built (the seed report)."""
    trainer.loss_fn.set_weights(_with_weight(trainer, **{LossWeights.PRIMARY: 0.0}))


def _primary_weight_zero_mid(trainer) -> None:
    _add_callback(trainer, _AtStep(STEP_K, lambda t: t.loss_fn.set_weights(
        _with_weight(t, **{LossWeights.PRIMARY: 0.0}))))


def _config_typo_fallback(trainer) -> None:
    # what `getattr(cfg, "LAM_COVV", 0.0)` does: the value falls back to a default nobody chose
    trainer.set_loss_weights(_with_weight(trainer, **{LossWeights.PRIMARY: 0.0}),
                             "default (fallback for misspelled key 'lam_covv')")


def _curriculum_jump(trainer) -> None:
    # the seed pipeline's curriculum: loop code that assigns the weight on the loss itself, so
    # nothing records who changed it (the run's weight sources still name the config)
    def jump(t) -> None:
        w = t.loss_fn.weights
        t.loss_fn.set_weights(dataclasses.replace(w, subspace=w.subspace * 2.8))

    _add_callback(trainer, _AtStep(STEP_K, jump))


def _loss_eps_floor(trainer) -> None:
    # ε = 1 is the mean diagonal of a trace-N covariance; added to the prediction only
    def cov(R_hat, R):
        R_true = trace_normalise(R)
        eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
        return (_fro2(R_hat + eye - R_true) / _fro2(R_true)).mean()

    _override_cov(trainer, cov)


def _unnormalised_target(trainer) -> None:
    # the target keeps a trace of 1e-4·N while the prediction has trace N (catalogue: 1e-4 vs 46)
    for which in ("train_data", "val_data"):
        _replace_data(trainer, which, R=getattr(trainer, which).R * 1e-4)
    _override_cov(trainer, lambda R_hat, R: (_fro2(R_hat - R) / _fro2(R).clamp_min(1e-30)).mean())


def _lr_x1000(trainer) -> None:
    scale_lr(trainer.optimizer, 1e3, scheduler=trainer.scheduler)


def _lr_zero(trainer) -> None:
    scale_lr(trainer.optimizer, 0.0, scheduler=trainer.scheduler)


def _warmup_from_zero(trainer) -> None:
    # a warm-up that starts at exactly 0 and is advanced once per epoch: the first epoch has lr 0
    per_epoch = trainer.steps_per_epoch
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda step: min(1.0, (step // per_epoch) / 2.0))


def _lr_tiny(trainer) -> None:
    # base 2e-6 and a warm-up from 1 % of it that lasts the whole run: ~2e-8 per step
    total = trainer.total_steps
    for group in trainer.optimizer.param_groups:
        group["initial_lr"] = 2e-6
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda step: 0.01 + 0.99 * step / (100 * total))


def _optimizer_subset(trainer) -> None:
    # built from one submodule: the factor head's parameters are in no param group
    tc = trainer.cfg.train
    trainer.optimizer = build_optimizer(trainer.model.encoder, lr=tc.lr, weight_decay=tc.weight_decay)
    _rebuild_scheduler(trainer)


def _optimizer_step_noop(trainer) -> None:
    make_noop(trainer.optimizer, "step")


class _NeverStepGate(Callback):
    """The catalogue's step gate: step only when every module's grad norm is above the
    global norm, which no module's can be, so no step is ever taken."""

    def on_before_optimizer_step(self, trainer, metrics):
        norms = metrics.get("grad_norm", {})
        total = norms.get("_total", 0.0)
        if all(v > total for k, v in norms.items() if k != "_total"):
            return None
        return "gate: not every module has a large enough gradient norm"


def _step_gate_never_steps(trainer) -> None:
    _add_callback(trainer, _NeverStepGate())


def _huge_weight_decay(trainer) -> None:
    # lr·wd = 1 at the peak rate: each step erases the decayed weights
    group = trainer.optimizer.param_groups[0]
    group["weight_decay"] = 1.0 / trainer.cfg.train.lr


def _frozen_module(trainer) -> None:
    trainer.model.encoder.requires_grad_(False)  # after the optimizer was built


def _group_lr_zero(trainer) -> None:
    scale_lr(trainer.optimizer, 0.0, groups=[1], scheduler=trainer.scheduler)


def _grad_clip_zero(trainer) -> None:
    # a clip threshold of 0 written where "off" was meant (the trainer clips only if > 0)
    trainer.cfg = trainer.cfg.with_values({"train.grad_clip": 1e-30}, "fault:grad_clip")


def _nan_grad(trainer) -> None:
    first = trainer.model.encoder[0].weight
    poison_gradient(first, math.nan, _training_step(trainer, STEP_K))


def _head_detached(trainer) -> None:
    detach_input(trainer.model.factor_head)


def _clamp_output(trainer) -> None:
    # head outputs have a spread of ~0.3 at init; ±0.02 leaves nearly all of them at a bound
    clamp_output(trainer.model.factor_head, -0.02, 0.02)


def _nan_label(trainer) -> None:
    # a corrupted label: NaN azimuths in one batch. (NaN in the model input is never silent
    # here: the loss's Cholesky raises on the NaN prediction before any callback runs.)
    when = _training_step(trainer, STEP_K)

    def hook(module, args):
        if not when():
            return None
        pred, R, phi, *rest = args
        return (pred, R, phi * math.nan, *rest)

    trainer.loss_fn.register_forward_pre_hook(hook)


def _inf_target(trainer) -> None:
    when = _training_step(trainer, STEP_K)

    def hook(module, args):
        if not when():
            return None
        pred, R, *rest = args
        return (pred, R * math.inf, *rest)

    trainer.loss_fn.register_forward_pre_hook(hook)


def _labels_shuffled(trainer) -> None:
    gen = torch.Generator().manual_seed(trainer.cfg.train.seed + 1)
    when = _training_step(trainer)

    def hook(module, args):
        if not when():
            return None
        pred, *targets = args  # R, phi, theta, r, mask: every target moves together
        perm = torch.randperm(targets[0].shape[0], generator=gen).to(targets[0].device)
        return (pred, *(t[perm] for t in targets))

    trainer.loss_fn.register_forward_pre_hook(hook)


def _constant_targets(trainer) -> None:
    data = trainer.train_data

    _replace_data(trainer, "train_data", **{name: getattr(data, name)[:1].expand_as(getattr(data, name)).clone()
                                            for name in ("R", "phi", "theta", "r", "mask")})


def _input_uninformative(trainer) -> None:
    # every scene's input is the same: R_bp a trace-N identity, and the snapshots (which a
    # network with unrolled likelihood steps also reads) the first scene's, so the network
    # can only output one answer
    for which in ("train_data", "val_data"):
        data = getattr(trainer, which)
        eye = torch.eye(data.rbp.shape[-1], dtype=data.rbp.dtype, device=data.rbp.device).expand_as(data.rbp)
        _replace_data(trainer, which, rbp=eye.clone(),
                      **{name: getattr(data, name)[:1].expand_as(getattr(data, name)).clone()
                         for name in ("y", "codes", "H")})


def _zero_init(trainer) -> None:
    with torch.no_grad():
        for module in trainer.model.modules():
            if isinstance(module, nn.Linear):
                module.weight.zero_()
                module.bias.zero_()


class _ShiftedReLU(nn.Module):
    """ReLU(x − shift): with a shift far above any LayerNorm output every unit is dead."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x - self.shift)


def _dead_activation(trainer) -> None:
    encoder = trainer.model.encoder
    for i, module in enumerate(encoder):
        if isinstance(module, nn.GELU):
            encoder[i] = _ShiftedReLU(100.0)


def _amp_overflow(trainer) -> None:
    # a real GradScaler and a gradient that overflows every step, as fp16 does when it cannot
    # hold a module's gradients: every step is skipped and the scale halves each time
    trainer.scaler = torch.amp.GradScaler(trainer.device.type)
    poison_gradient(trainer.model.factor_head.bias, math.inf, _training_step(trainer))


REGISTRY: list[Fault] = check_faults([
    # -- loss weights
    Fault("primary_weight_zero", "weights", _primary_weight_zero, ("weights.primary_zero", "loss.primary_share"),
          "the primary weight is overwritten with 0 after the loss is built (the seed report)", 0, (1,)),
    Fault(f"primary_weight_zero@{STEP_K}", "weights", _primary_weight_zero_mid, ("weights.primary_zero",),
          f"a schedule writes 0 into the primary weight at step {STEP_K}", STEP_K, (1,)),
    Fault("config_typo_fallback", "weights", _config_typo_fallback, ("weights.primary_zero",),
          "a misspelled config key falls back to a default of 0 for the primary weight", 0, (8,)),
    Fault(f"curriculum_jump@{STEP_K}", "weights", _curriculum_jump, ("weights.unplanned_change", "weights.changed"),
          f"loop code multiplies the subspace weight by 2.8 at step {STEP_K} (0.25 → 0.7) without "
          "recording a source", STEP_K, (11,)),
    # -- the loss itself
    Fault("loss_eps_floor", "loss", _loss_eps_floor, ("preflight.loss_self_test", "val.plateau"),
          "NMSE with ε = 1 added to the prediction only: the loss cannot reach 0 at the target", 0, (7,)),
    Fault("unnormalised_target", "numerics", _unnormalised_target, ("value.out_of_range", "loss.diverging"),
          "target covariances keep a trace of 1e-4·N while predictions have trace N: NMSE ~1e8", 0, (6,)),
    # -- learning rate and schedule
    Fault("lr_x1000", "optimizer", _lr_x1000, ("loss.diverging", "grad.exploding", "param.update_ratio"),
          "every learning rate multiplied by 1000", 0, (14,)),
    Fault("lr_zero", "schedule", _lr_zero, ("lr.zero", "param.frozen"),
          "every learning rate is 0", 0, (2,)),
    Fault("warmup_from_zero", "schedule", _warmup_from_zero, ("lr.zero", "param.frozen"),
          "a warm-up from exactly 0 advanced per epoch: the whole first epoch has lr 0", 0, (2,)),
    Fault("lr_tiny", "schedule", _lr_tiny, ("lr.tiny", "param.update_ratio"),
          "base lr 2e-6 with a warm-up from 1 %: ~2e-8 for the whole run", 0, (2,)),
    Fault("group_lr_zero", "schedule", _group_lr_zero, ("lr.zero",),
          "the no-decay group (biases, norms) gets lr 0", 0, ()),
    # -- optimizer
    Fault("optimizer_subset", "optimizer", _optimizer_subset, ("param.not_in_optimizer", "param.frozen"),
          "the optimizer is built from the encoder only: the factor head is never updated", 0, (13,)),
    Fault("optimizer_step_noop", "optimizer", _optimizer_step_noop, ("param.frozen", "val.constant"),
          "optimizer.step() does nothing although the loop counts the step as applied", 0, (3,)),
    Fault("step_gate_never_steps", "optimizer", _step_gate_never_steps, ("steps.skipped", "val.constant"),
          "a step gate vetoes every optimizer step (catalogue row 3)", 0, (3,)),
    Fault("huge_weight_decay", "optimizer", _huge_weight_decay, ("optim.weight_decay", "param.update_ratio"),
          "weight decay 1/lr on the matrices: each step erases them", 0, ()),
    # -- gradients
    Fault("grad_clip_zero", "gradients", _grad_clip_zero, ("param.update_blocked", "param.update_ratio"),
          "gradients are clipped to norm 1e-30: updates are ~0 though gradients are healthy", 0, ()),
    Fault(f"nan_grad@{STEP_K}", "gradients", _nan_grad, ("grad.nonfinite",),
          f"the first encoder layer's gradient is NaN at step {STEP_K} while the loss is finite", STEP_K, (5,)),
    Fault("amp_overflow", "amp", _amp_overflow, ("amp.scale_collapse", "steps.skipped", "amp.overflow"),
          "a GradScaler finds inf in the gradients every step: every step is skipped", 0, (4,)),
    # -- model
    Fault("head_detached", "model", _head_detached, ("grad.none", "param.frozen"),
          "the factor head's input is detached: the encoder gets no gradient", 0, (9,)),
    Fault("clamp_output", "model", _clamp_output, ("grad.dead_units", "output.saturated", "grad.zero"),
          "the factor head's output is clamped to ±0.02: most outputs sit at a bound", 0, (12,)),
    Fault("frozen_module", "model", _frozen_module, ("param.frozen",),
          "the encoder is set requires_grad=False after the optimizer was built", 0, ()),
    Fault("zero_init", "model", _zero_init, ("grad.dead_units", "grad.zero"),
          "every Linear weight and bias initialised to 0", 0, ()),
    Fault("dead_activation", "model", _dead_activation, ("grad.dead_units", "grad.zero"),
          "every encoder activation is a ReLU shifted by 100: all units are dead", 0, ()),
    # -- data
    Fault(f"nan_label@{STEP_K}", "data", _nan_label, ("loss.nonfinite",),
          f"the target azimuths of the batch at step {STEP_K} are NaN", STEP_K, (14,)),
    Fault(f"inf_target@{STEP_K}", "data", _inf_target, ("loss.nonfinite",),
          f"the target covariances of the batch at step {STEP_K} are infinite", STEP_K, ()),
    Fault("labels_shuffled", "data", _labels_shuffled, ("preflight.micro_overfit", "val.plateau"),
          "the targets are shuffled within every training batch", 0, ()),
    Fault("constant_targets", "data", _constant_targets, ("val.train_gap", "loss.constant"),
          "every training scene carries the first scene's targets", 0, ()),
    Fault("input_uninformative", "data", _input_uninformative, ("preflight.micro_overfit", "output.collapsed"),
          "every input is the same identity matrix: the prediction collapses to one answer", 0, (10,)),
])

__all__ = ["REGISTRY", "STEP_K"]

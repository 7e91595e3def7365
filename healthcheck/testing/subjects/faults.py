"""Faults any plain-PyTorch subject can carry, as changes to its `Setup`.

Each one is a class of bug that public reports keep showing (forum threads, issue
trackers, notebooks): a loop that never clears its gradients, a loss term logged but left
out of the sum, a term entering with the wrong sign, a prediction detached in one term, a
schedule stuck at its floor, weight decay on every parameter, labels shuffled apart from
their inputs, a pipeline that feeds constant inputs; and, added later, a schedule stepped
per batch, a rate 100 times too high, swapped momentum constants, an optimizer holding a
copy of the model, weights reset inside the loop. None of them is in the failure
catalogue the built-in detectors were written from. `generic_faults` makes one `Fault`
per class for a subject, given which of its terms each fault should touch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from ...faults import Fault
from .loop import Setup


def _no_zero_grad(setup: Setup) -> None:
    setup.clear = lambda s: None


def _clear_only(module_key: str) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        setup.clear = lambda s: s.extra[module_key].zero_grad(set_to_none=True)
    return inject


def _leave_out(term: str) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        setup.combine = lambda terms, w: torch.stack([w[k] * v for k, v in terms.items() if k != term]).sum()
    return inject


def _flip(term: str) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        setup.combine = lambda terms, w: torch.stack(
            [(-1.0 if k == term else 1.0) * w[k] * v for k, v in terms.items()]).sum()
    return inject


def _detach(term: str) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        setup.extra["detach"] = term
    return inject


def _lr_floor(factor: float) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        for g in setup.optimizer.param_groups:
            g["lr"] = g.get("initial_lr", g["lr"])
            g.pop("initial_lr", None)
        setup.scheduler = torch.optim.lr_scheduler.LambdaLR(setup.optimizer, lambda step: factor)
    return inject


def _decay_everything(lr_times_wd: float) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        for g in setup.optimizer.param_groups:
            g["weight_decay"] = lr_times_wd / g.get("initial_lr", g["lr"])
    return inject


def _map_batches(change: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
                 start: int) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        original = setup.batches
        per_step = setup.accumulate

        def batches(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = original(i)
            return change(x, y, i) if i // per_step >= start else (x, y)
        setup.batches = batches
    return inject


def _lr_decays_per_step(gamma: float) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        for g in setup.optimizer.param_groups:
            g["lr"] = g.get("initial_lr", g["lr"])
            g.pop("initial_lr", None)
        setup.scheduler = torch.optim.lr_scheduler.ExponentialLR(setup.optimizer, gamma)
    return inject


def _lr_times(factor: float) -> Callable[[Setup], None]:
    def inject(setup: Setup) -> None:
        for g in setup.optimizer.param_groups:
            g["lr"] *= factor
            if "initial_lr" in g:
                g["initial_lr"] *= factor
        if setup.scheduler is not None:
            setup.scheduler.base_lrs = [lr * factor for lr in setup.scheduler.base_lrs]
    return inject


def _momentum_swapped(setup: Setup) -> None:
    for g in setup.optimizer.param_groups:
        if "betas" in g:
            g["betas"] = (g["betas"][1], g["betas"][0])
        elif "momentum" in g:
            g["momentum"] = 0.999


def _optimizer_on_copy(setup: Setup) -> None:
    twin = copy.deepcopy(setup.model)
    first = setup.optimizer.param_groups[0]
    optimizer_class: Any = type(setup.optimizer)  # AdamW or SGD: both take lr
    setup.optimizer = optimizer_class(twin.parameters(), lr=first.get("initial_lr", first["lr"]))
    setup.scheduler = None


def _reset_each_step(setup: Setup) -> None:
    compute, calls = setup.compute, [0]

    def reset_then_compute(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Any:
        if calls[0] % setup.accumulate == 0:  # once per optimizer step, before its first batch
            with torch.no_grad():
                for module in model.modules():
                    reset = getattr(module, "reset_parameters", None)
                    if module is not model and callable(reset):
                        reset()
        calls[0] += 1
        return compute(model, inputs, targets)
    setup.compute = reset_then_compute


def _shuffle_targets(x: torch.Tensor, y: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10_000 + i)
    return x, y[torch.randperm(y.shape[0], generator=gen)]


def _constant_inputs(x: torch.Tensor, y: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros_like(x), y


def generic_faults(*, aux_term: str, main_term: str, head_key: str = "head", lr_floor: float = 1e-3,
                   lr_times_wd: float = 1e-2, constant_from: int = 60) -> list[Fault]:
    """The faults every subject carries. ``aux_term`` is left out or flipped, ``main_term``
    is detached; ``head_key`` names the module in ``setup.extra`` that a wrong ``zero_grad``
    clears."""
    return [
        Fault("no_zero_grad", "gradients", _no_zero_grad,
              description="optimizer.zero_grad() dropped from the loop in a refactor: gradients add up "
                          "over every step (forum threads: 'loss oscillates after I moved zero_grad')"),
        Fault("zero_grad_head_only", "gradients", _clear_only(head_key),
              description="zero_grad called on one submodule (the head) instead of the model or the "
                          "optimizer: the rest accumulates (reports of two models, one optimizer)"),
        Fault(f"{aux_term}_left_out", "loss", _leave_out(aux_term),
              description=f"the {aux_term!r} term is logged but not added to the back-propagated sum "
                          "(a refactor that builds the total from a stale list of terms)"),
        Fault(f"{aux_term}_wrong_sign", "loss", _flip(aux_term),
              description=f"the {aux_term!r} term enters the total with the wrong sign (a penalty "
                          "written as a bonus, a KL or log-likelihood without its minus)"),
        Fault(f"{main_term}_detached", "loss", _detach(main_term),
              description=f"the prediction is detached inside the {main_term!r} term (a .detach() or "
                          ".item() copied from logging code), so that term teaches the model nothing"),
        Fault("lr_floor", "schedule", _lr_floor(lr_floor),
              description=f"the schedule's lambda returns a constant {lr_floor:g} from step 0 (the floor "
                          "of a warm-up/cosine rewritten as a constant, a unit error in the rate)"),
        Fault("decay_everything", "optimizer", _decay_everything(lr_times_wd),
              description=f"weight decay on every parameter (norms, biases, embeddings) with lr x wd = "
                          f"{lr_times_wd:g} (decay meant for Adam's L2 passed to AdamW)"),
        Fault("targets_shuffled", "data", _map_batches(_shuffle_targets, 0),
              description="targets permuted apart from their inputs (a shuffle applied to one array of "
                          "the pair, a join on the wrong key)"),
        Fault(f"constant_inputs@{constant_from}", "data", _map_batches(_constant_inputs, constant_from),
              start_step=constant_from,
              description="from a point in the run the pipeline feeds all-zero inputs with the true "
                          "targets (an exhausted shard padded with zeros, a normalisation by a huge std)"),
        # added later than the ones above, after the detectors they were first tried on
        Fault("lr_decays_per_step", "schedule", _lr_decays_per_step(0.95),
              description="an exponential decay meant per epoch (gamma 0.95) stepped every batch: the rate "
                          "is below 1 % of its start after 90 steps (scheduler.step() inside the batch loop)"),
        Fault("lr_x100", "schedule", _lr_times(100.0),
              description="a learning rate 100 times too high (a unit error, a rate scaled by the batch "
                          "size twice)"),
        Fault("momentum_swapped", "optimizer", _momentum_swapped,
              description="Adam's betas passed in the wrong order (0.999, 0.9), or SGD's momentum set to "
                          "Adam's beta2 (0.999)"),
        Fault("optimizer_on_copy", "optimizer", _optimizer_on_copy,
              description="the optimizer holds a copy of the model (built before the model was deep-copied "
                          "or re-created), so the model being trained never changes"),
        Fault("weights_reset_each_step", "model", _reset_each_step,
              description="reset_parameters() runs inside the loop (an init helper called from the training "
                          "step, a reload meant for resuming placed in the loop): every step starts afresh"),
    ]


def detach_if(setup_extra: dict[str, Any], term: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` detached when the `_detach` fault targets ``term``, else as is."""
    return tensor.detach() if setup_extra.get("detach") == term else tensor

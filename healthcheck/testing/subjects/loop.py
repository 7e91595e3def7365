"""The training loop every plain-PyTorch subject runs, and the knobs its faults turn.

A subject builds a `Setup`: its model, optimizer, scheduler, batches and loss, plus the
handful of choices a hand-written loop makes (how gradients are cleared, whether and where
they are clipped, accumulation, autocast). `train` is that loop, written the way people
write it, with the calls of `TrainingHealth` in their documented places. A fault is
a change to the `Setup` before training: a clearing step that does nothing, a term left
out of the sum, a data source that shuffles the labels; so faults read like the bug
reports they come from and need no access to the loop's source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Terms = dict[str, torch.Tensor]


def weighted_sum(terms: Terms, weights: dict[str, float]) -> torch.Tensor:
    """Σ weight × term: the total the loop back-propagates."""
    return sum(weights[k] * v for k, v in terms.items())  # type: ignore[return-value]


def clear_all(setup: Setup) -> None:
    setup.optimizer.zero_grad(set_to_none=True)


@dataclass
class Setup:
    """A built training run: what `train` needs, and what faults change.

    ``compute(model, inputs, targets) -> (output, terms)``: the model's output (a tensor
    or a tuple of tensors) and the unweighted loss terms; ``combine`` turns them into the
    total; ``batches(i)`` gives the i-th (inputs, targets) pair; ``clear`` clears the
    gradients before a step; ``pairing_loss(output, targets)`` is the per-batch loss of
    an output against targets, for the data-pairing probe.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    compute: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[Any, Terms]]
    weights: dict[str, float]
    pairing_loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    combine: Callable[[Terms, dict[str, float]], torch.Tensor] = weighted_sum
    clear: Callable[[Setup], None] = clear_all
    clip: float | None = 1.0
    clip_before_monitor: bool = True
    accumulate: int = 1
    autocast: bool = False
    primary: str | None = None
    probe: bool = True  # call the monitor's before_backward probes, where it has them
    extra: dict[str, Any] = field(default_factory=dict)  # subject-specific parts faults may use


def train(setup: Setup, health: Any, steps: int) -> None:
    """``steps`` optimizer steps of ``setup``, monitored by ``health`` (a `TrainingHealth`)."""
    model, opt = setup.model, setup.optimizer
    probe = getattr(health, "before_backward", None) if setup.probe else None
    model.train()
    for step in range(steps):
        setup.clear(setup)
        for micro in range(setup.accumulate):
            inputs, targets = setup.batches(step * setup.accumulate + micro)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.autocast):
                output, terms = setup.compute(model, inputs, targets)
                loss = setup.combine(terms, setup.weights)
            if probe is not None and micro == setup.accumulate - 1:
                probe(output, terms, setup.weights, targets=targets, loss_fn=setup.pairing_loss)
            (loss / setup.accumulate).backward()
        if setup.clip is not None and setup.clip_before_monitor:
            torch.nn.utils.clip_grad_norm_(model.parameters(), setup.clip)
        health.after_backward(loss, terms={k: v.detach() for k, v in terms.items()},
                              weights=setup.weights, primary=setup.primary, batches=setup.accumulate)
        if setup.clip is not None and not setup.clip_before_monitor:
            torch.nn.utils.clip_grad_norm_(model.parameters(), setup.clip)
        opt.step()
        if setup.scheduler is not None:
            setup.scheduler.step()
        health.after_step()


def warmup_cosine(warmup: int, total: int, floor: float = 0.1, start: float = 0.0) -> Callable[[int], float]:
    """The LambdaLR factor of a linear warm-up from ``start`` then a cosine down to ``floor``."""
    def factor(step: int) -> float:
        if step < warmup:
            return start + (1.0 - start) * (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    return factor


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups as most codebases build them: matrices decay; biases, norm
    layers and embeddings do not."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            exempt = name.endswith("bias") or isinstance(
                module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.Embedding))
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# The variations real loops have; every subject's healthy runs cover each of them.
VARIANTS = ("plain", "accum2", "clip_after", "warmup_small", "bf16", "frozen")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, but got {variant=}")
    return variant


def apply_variant(setup: Setup, variant: str) -> Setup:
    """The loop-side variations (the model-side ones, a frozen part and a warm-up from a
    small rate, are the subject's to build)."""
    if variant == "accum2":
        setup.accumulate = 2
    elif variant == "clip_after":
        setup.clip_before_monitor = False
    elif variant == "bf16":
        setup.autocast = True
    return setup


def seeded(seed: int, i: int) -> torch.Generator:
    """The generator of batch ``i`` of a run with ``seed``: batches do not depend on what
    else drew random numbers before them."""
    return torch.Generator().manual_seed(seed * 1_000_003 + i)

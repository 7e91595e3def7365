"""A small convolutional image classifier on synthetic images.

Ten classes, each a fixed random 3×16×16 pattern seen through noise and a random
brightness, classified by two conv-BatchNorm-ReLU-pool stages and a linear head, trained
with SGD and momentum, coupled weight decay and a warm-up then cosine schedule: the
shape of most image-classification tutorials. Chance level is log(10) ≈ 2.3 nats; a
healthy run reaches ~0.1 within two hundred steps.

Terms: ``ce`` (cross-entropy) and ``confidence`` (log C minus the entropy of the
predicted distribution: the confidence penalty that discourages over-sure outputs;
weight 0.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...faults import Fault
from .faults import detach_if, generic_faults
from .loop import Setup, apply_variant, check_variant, seeded, warmup_cosine

NAME = "imgcls"
CLASSES, BATCH, SIZE = 10, 32, 16
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
TEMPLATES = torch.randn(CLASSES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * (SIZE // 4) ** 2, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def build(seed: int, variant: str = "plain", steps: int = 200) -> Setup:
    check_variant(variant)
    torch.manual_seed(seed)
    model = SmallCNN()
    if variant == "frozen":  # a stem taken from elsewhere and kept fixed
        for p in model.features[:2].parameters():
            p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY)
    start = 0.01 if variant == "warmup_small" else 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, steps // 10), steps, start=start))
    extra: dict = {"head": model.head, "softmax_twice": False}

    def batches(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = seeded(seed, i)
        labels = torch.randint(CLASSES, (BATCH,), generator=gen)
        gain = 0.5 + torch.rand(BATCH, 1, 1, 1, generator=gen)
        return gain * TEMPLATES[labels] + torch.randn(BATCH, 3, SIZE, SIZE, generator=gen), labels

    def compute(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        logits = model(x).float()
        scores = logits.softmax(-1) if extra["softmax_twice"] else logits
        ce = F.cross_entropy(detach_if(extra, "ce", scores), y)
        logp = F.log_softmax(detach_if(extra, "confidence", logits), -1)
        entropy = -(logp.exp() * logp).sum(-1).mean()
        return logits, {"ce": ce, "confidence": math.log(CLASSES) - entropy}

    setup = Setup(model, opt, sched, batches, compute, {"ce": 1.0, "confidence": 0.1},
                  pairing_loss=lambda logits, y: F.cross_entropy(logits.float(), y), primary="ce", extra=extra)
    return apply_variant(setup, variant)


def _bn_not_in_optimizer(setup: Setup) -> None:
    bn = {id(p) for m in setup.model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    for g in setup.optimizer.param_groups:
        g["params"] = [p for p in g["params"] if id(p) not in bn]


def _softmax_twice(setup: Setup) -> None:
    setup.extra["softmax_twice"] = True


FAULTS = generic_faults(aux_term="confidence", main_term="ce", lr_times_wd=1e-2) + [
    Fault("bn_not_in_optimizer", "optimizer", _bn_not_in_optimizer,
          description="the optimizer is built from the conv and linear weights only, so the BatchNorm "
                      "scales and shifts never train (a hand-made parameter list)"),
    Fault("softmax_twice", "loss", _softmax_twice,
          description="cross_entropy applied to softmax probabilities instead of logits (the model "
                      "ends in a softmax layer): gradients shrink and learning crawls"),
]

"""A small variational autoencoder on synthetic low-rank data.

32-dimensional vectors made from 4 hidden factors through a fixed nonlinear map, plus
noise; an MLP encoder gives the mean and log-variance of an 8-dimensional code, an MLP
decoder reconstructs. AdamW, a warm-up then cosine schedule, gradient clipping.

Terms: ``recon`` (mean squared reconstruction error) and ``kl`` (the KL divergence of
the code from a standard normal, per sample; weight 0.05, a β-VAE's β).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .faults import detach_if, generic_faults
from .loop import Setup, apply_variant, check_variant, seeded, warmup_cosine

NAME = "autoencoder"
DIM, FACTORS, CODE, BATCH = 32, 4, 8, 64
LR, WEIGHT_DECAY = 2e-3, 1e-4
_g = torch.Generator().manual_seed(0)
MIX_A, MIX_B = torch.randn(FACTORS, 16, generator=_g), torch.randn(16, DIM, generator=_g) / 4


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 2 * CODE))
        self.decoder = nn.Sequential(nn.Linear(CODE, 64), nn.ReLU(), nn.Linear(64, DIM))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(z), mu, logvar


def build(seed: int, variant: str = "plain", steps: int = 200) -> Setup:
    check_variant(variant)
    torch.manual_seed(seed)
    model = VAE()
    if variant == "frozen":
        for p in model.encoder[0].parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR,
                            weight_decay=WEIGHT_DECAY)
    start = 0.01 if variant == "warmup_small" else 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, steps // 10), steps, start=start))
    extra: dict = {"head": model.decoder}

    def batches(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = seeded(seed, i)
        factors = torch.randn(BATCH, FACTORS, generator=gen)
        x = torch.tanh(factors @ MIX_A) @ MIX_B + 0.05 * torch.randn(BATCH, DIM, generator=gen)
        return x, x.clone()

    def compute(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        recon, mu, logvar = model(x)
        rec = F.mse_loss(detach_if(extra, "recon", recon).float(), y)
        mu_, logvar_ = detach_if(extra, "kl", mu).float(), detach_if(extra, "kl", logvar).float()
        kl = (-0.5 * (1 + logvar_ - mu_ ** 2 - logvar_.exp()).sum(-1)).mean()
        return (recon, mu, logvar), {"recon": rec, "kl": kl}

    setup = Setup(model, opt, sched, batches, compute, {"recon": 1.0, "kl": 0.05},
                  pairing_loss=lambda out, y: F.mse_loss(out[0].float(), y), primary="recon", extra=extra)
    return apply_variant(setup, variant)


FAULTS = generic_faults(aux_term="kl", main_term="recon", head_key="head", lr_times_wd=1e-2)

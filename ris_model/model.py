"""The covariance network: from a physics-informed estimate to a low-rank factor F.

The input is the back-projected covariance R_bp (physics.md): cheap, biased, but already
in the aperture's coordinates, so the network learns a correction rather than the
measurement model. The output is a factor F ∈ C^{N×K_max}; R̂ = N·FFᴴ/tr(FFᴴ) is then
Hermitian, PSD and rank ≤ K_max by construction, and MUSIC can use span(F) directly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ris_model.config import ModelConfig, SystemConfig
from ris_model.loss import CovPrediction


def hermitian_features(R: torch.Tensor) -> torch.Tensor:
    """The N² real numbers that determine a Hermitian R: Re of the upper triangle with the
    diagonal, Im of the strict upper triangle. (B, N, N) complex -> (B, N²) real."""
    n = R.shape[-1]
    iu = torch.triu_indices(n, n, offset=0, device=R.device)
    ius = torch.triu_indices(n, n, offset=1, device=R.device)
    return torch.cat([R[..., iu[0], iu[1]].real, R[..., ius[0], ius[1]].imag], dim=-1)


class CovarianceNet(nn.Module):
    """MLP trunk on Hermitian features of R_bp plus SNR, and a factor head.

    Two top-level modules, ``encoder`` and ``factor_head``, so per-module gradient and
    update norms name the part of the network that stopped learning.
    """

    def __init__(self, system: SystemConfig, cfg: ModelConfig) -> None:
        super().__init__()
        self.n = system.n_elements
        self.k_max = system.k_max
        n_in = self.n * self.n + 1  # Hermitian features of R_bp, and the SNR
        layers: list[nn.Module] = []
        width_in = n_in
        for _ in range(cfg.depth):
            layers += [nn.Linear(width_in, cfg.width), nn.LayerNorm(cfg.width), nn.GELU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width_in = cfg.width
        self.encoder = nn.Sequential(*layers)
        self.factor_head = nn.Linear(cfg.width, 2 * self.n * self.k_max)  # Re and Im of F

    def forward(self, rbp: torch.Tensor, snr_db: torch.Tensor) -> CovPrediction:
        feats = hermitian_features(rbp).to(self.factor_head.weight.dtype)  # (B, N²)
        snr = (snr_db.to(feats.dtype) / 20.0).unsqueeze(-1)  # (B, 1), O(1) over the usual SNR range
        h = self.encoder(torch.cat([feats, snr], dim=-1))  # (B, width)
        out = self.factor_head(h).view(-1, 2, self.n, self.k_max)  # (B, 2, N, K)
        factor = torch.complex(out[:, 0].float(), out[:, 1].float())  # (B, N, K); complex math in fp32
        return CovPrediction(factor=factor / math.sqrt(self.n))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

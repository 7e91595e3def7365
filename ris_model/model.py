"""The covariance network: from a physics-informed estimate to a low-rank factor F.

The input is the back-projected covariance R_bp (docs/physics.md): cheap, biased, but already
in the aperture's coordinates, so the network learns a correction rather than the
measurement model. The output is a factor F ∈ C^{N×K_max}; R̂ = N·FFᴴ/tr(FFᴴ) is then
Hermitian, PSD and rank ≤ K_max by construction, and MUSIC can use span(F) directly.

With ``model.factor = "residual"`` the factor starts from R_bp's dominant eigen-factor
and the head adds a scaled correction: an untrained network then reproduces MUSIC on
R_bp (as precise as MUSIC on R_ls at these presets) instead of a random subspace, and
training spends its budget on what the measurement gets wrong.

With ``model.unroll_steps = T > 0`` the factor then takes T steps on the likelihood of
the snapshots themselves (:mod:`ris_model.estimators.covariance_ml`): R_bp is a lossy
summary of the snapshots (each was seen through its own code), and the steps put back
what it lost. The loss is back-propagated through them, so the trunk and head learn where
to start them. Their sizes are fixed by default (``model.unroll_sizes``): trained, they
shrink and the steps stop helping (docs/physics.md). ``music_ml`` in the evaluation
table takes the same steps from R_bp's dominant factor, without the network, so what
training adds is visible on its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ris_model.config import ModelConfig, SystemConfig
from ris_model.estimators.covariance_ml import Snapshots, at_snapshot_scale, likelihood_step
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
    update norms name the part of the network that stopped learning. In the residual form
    the trunk also reads the base factor, and the head's output is multiplied by the fixed
    ``residual_scale``: Adam moves every weight by about the learning rate whatever its
    initial size, so only a fixed scale keeps the early, still random correction from
    swamping the base.
    """

    def __init__(self, system: SystemConfig, cfg: ModelConfig) -> None:
        super().__init__()
        self.n = system.n_elements
        self.k_max = system.k_max
        n_in = self.n * self.n + 1  # Hermitian features of R_bp, and the SNR
        self.residual = cfg.factor == "residual"
        if self.residual:
            n_in += 2 * self.n * self.k_max  # the base factor itself, so the head sees what it corrects
        layers: list[nn.Module] = []
        width_in = n_in
        for _ in range(cfg.depth):
            layers += [nn.Linear(width_in, cfg.width), nn.LayerNorm(cfg.width), nn.GELU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width_in = cfg.width
        self.encoder = nn.Sequential(*layers)
        # the head's rows: Re and Im of F (N x K_max), or of the mixing (m x K_max) when the
        # residual correction is restricted to R_bp's m dominant eigenvectors
        self.span = min(cfg.residual_span, self.n) if self.residual else 0
        self.rows = self.span or self.n
        self.factor_head = nn.Linear(cfg.width, 2 * self.rows * self.k_max)
        self.residual_scale = cfg.residual_scale
        self.unroll = (LikelihoodSteps(cfg.unroll_steps, cfg.unroll_step, learned=cfg.unroll_sizes == "learned")
                       if cfg.unroll_steps else None)

    def forward(self, rbp: torch.Tensor, snr_db: torch.Tensor, snapshots: Snapshots | None = None) -> CovPrediction:
        dtype = self.factor_head.weight.dtype
        feats = hermitian_features(rbp).to(dtype)  # (B, N²)
        snr = (snr_db.to(feats.dtype) / 20.0).unsqueeze(-1)  # (B, 1), O(1) over the usual SNR range
        parts = [feats, snr]
        if self.residual:
            vecs, lam = dominant_eigen(rbp, max(self.k_max, self.span))  # no gradient
            base = vecs[..., :self.k_max] * (lam[:, :self.k_max] / self.n).sqrt().unsqueeze(-2).to(vecs.dtype)
            parts.append(torch.cat([base.real, base.imag], dim=-1).flatten(1).to(dtype) * math.sqrt(self.n))
        h = self.encoder(torch.cat(parts, dim=-1))  # (B, width)
        out = self.factor_head(h).view(-1, 2, self.rows, self.k_max)  # (B, 2, rows, K)
        factor = torch.complex(out[:, 0].float(), out[:, 1].float()) / math.sqrt(self.rows)  # complex math in fp32
        if self.span:
            factor = vecs[..., :self.span] @ factor  # (B, N, K): a mixing of the dominant eigenvectors
        if self.residual:
            factor = base + self.residual_scale * factor
        if self.unroll is not None:
            if snapshots is None:
                raise ValueError("this network takes likelihood steps on the snapshots (model.unroll_steps > 0); "
                                 "pass them: net(rbp, snr_db, batch.snapshots)")
            factor = self.unroll(factor, snapshots.to(factor.dtype))
        return CovPrediction(factor=factor)


class LikelihoodSteps(nn.Module):
    """T unrolled steps on the snapshots' likelihood, step t of size exp(log_step[t]).

    Sizes live on a log scale, so that a step can never turn into an ascent. Fixed sizes
    are a buffer, not a frozen parameter: nothing is meant to train them, and a monitor
    that flags parameters that never move should not see them.
    """

    def __init__(self, steps: int, initial: float, *, learned: bool = True) -> None:
        super().__init__()
        log_step = torch.full((steps,), math.log(initial))
        if learned:
            self.log_step = nn.Parameter(log_step)
        else:
            self.register_buffer("log_step", log_step)

    def forward(self, factor: torch.Tensor, snapshots: Snapshots) -> torch.Tensor:
        factor = at_snapshot_scale(factor, snapshots)
        for log_step in self.log_step.float():
            factor = likelihood_step(factor, snapshots, log_step.exp())
        return factor


@torch.no_grad()
def dominant_eigen(R: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k dominant unit eigenvectors (B, N, k), strongest first, each with its first
    element real and >= 0, and their eigenvalues (B, k), clamped at 0."""
    evals, evecs = torch.linalg.eigh(R.to(torch.complex64))  # ascending
    top = evecs[..., -k:].flip(-1)  # (B, N, k), strongest first
    lam = evals[..., -k:].flip(-1).clamp_min(0)  # (B, k)
    ref = top[..., 0, :]  # (B, k)
    phase = torch.where(ref.abs() > 0, ref.conj() / ref.abs().clamp_min(1e-30), torch.ones_like(ref))
    return top * phase.unsqueeze(-2), lam


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

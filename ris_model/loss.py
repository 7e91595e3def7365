"""HybridLoss: named covariance-learning terms, each weighted by an explicit LossWeights.

Every term is returned unweighted next to the weighted total, so a monitor can see a
term that carries no signal (weight 0, or a term stuck at 0) instead of only the sum.
There are no weight defaults here: the seed report's bug was a constructor default
overwritten with 0 somewhere else. ``HybridLoss(weights)`` is the only way in.

Every term is 0 at a perfect prediction (docs/failure-catalogue.md row 7: a loss that is not 0 at the
target plateaus above it), and none uses ``eigh`` in its backward pass (row 5: eigh's
gradient divides by eigenvalue gaps, which are exactly 0 for F Fᴴ + σ²I).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ris_model.config import MIN_PRIMARY_WEIGHT, ConfigError, LossWeights, SystemConfig
from ris_model.estimators.covariance_ml import dominant_factor
from ris_model.physics.geometry import system_positions, wavenumber
from ris_model.physics.steering import ris_steering


@dataclass(frozen=True)
class CovPrediction:
    """A predicted covariance as a low-rank factor: R = N·F Fᴴ / tr(F Fᴴ)."""

    factor: torch.Tensor  # (B, N, K) complex

    @property
    def covariance(self) -> torch.Tensor:
        return trace_normalise(self.factor @ self.factor.mH)  # (B, N, N)

    @classmethod
    def from_covariance(cls, R: torch.Tensor, rank: int) -> CovPrediction:
        """The eigen-factor U_K·diag(√λ_K) of R: the prediction a perfect model makes.

        Its columns are orthogonal, so it is also the optimum of the ``ortho`` term. Used
        by the self-test and by tests; never on a training path (eigh backward).
        """
        return cls(factor=dominant_factor(R, rank))  # strongest first, as the model orders them


@dataclass(frozen=True)
class LossOutput:
    total: torch.Tensor  # scalar, the value to back-propagate
    terms: dict[str, torch.Tensor]  # unweighted, scalars
    weights: dict[str, float]


def trace_normalise(R: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each matrix to trace N (R and R̂ are compared on the same scale: row 6)."""
    n = R.shape[-1]
    tr = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)  # (B,)
    return R * (n / tr.clamp_min(eps)).to(R.dtype)[..., None, None]


def noise_energy(factor: torch.Tensor, steering: torch.Tensor, rel_ridge: float | None = None) -> torch.Tensor:
    """Share of each steering vector's energy outside span(F): (‖a‖² − aᴴPa) / ‖a‖².

    P = F (FᴴF + δI)⁻¹ Fᴴ is the projector onto span(F), through a Cholesky solve of the
    K × K Gram matrix. For full-rank F it equals ‖a‖² − ‖Qᴴa‖² with Q = orth(F) (the
    MUSIC denominator); unlike QR it stays smooth when some columns of F are 0, which is
    what a trained network outputs for the empty source slots. δ is relative to tr(FᴴF):
    1e-6 in single precision (near its rounding level), 1e-12 in double.

    factor (B, N, K), steering (B, S, N) -> (B, S), each in [0, 1].
    """
    if rel_ridge is None:
        rel_ridge = 1e-12 if factor.dtype == torch.complex128 else 1e-6
    gram = factor.mH @ factor  # (B, K, K)
    k = gram.shape[-1]
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).real.sum(-1).clamp_min(1e-30) / k  # (B,)
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    chol = torch.linalg.cholesky(gram + (rel_ridge * scale).to(gram.dtype)[:, None, None] * eye)
    proj = factor.mH @ steering.mT  # (B, K, S) = Fᴴ a
    coeff = torch.linalg.solve_triangular(chol, proj, upper=False)  # L⁻¹ Fᴴ a
    inside = coeff.abs().pow(2).sum(-2)  # (B, S)
    total = steering.abs().pow(2).sum(-1)  # (B, S)
    return ((total - inside) / total.clamp_min(1e-30)).clamp(0.0, 1.0)


class HybridLoss(nn.Module):
    """The weighted sum of the covariance-learning terms.

    Terms (each unweighted in ``LossOutput.terms``):
      - ``cov``: ‖R̂ − R‖²_F / ‖R‖²_F on trace-normalised matrices, the primary term;
        0 at R̂ = R and 1 at R̂ = 0.
      - ``subspace``: mean share of each true steering vector's energy that lies in the
        predicted noise subspace, i.e. MUSIC's denominator at the truth; 0 when span(F)
        contains every source.
      - ``peak``: e(truth) / (e(truth) + mean e(neighbours)), e = noise energy, probes
        ``peak_offset`` away in φ and θ; 0 when the truth is a MUSIC null, ~½ when the
        spectrum is flat there.
      - ``ortho``: ‖offdiag(FᴴF)‖²_F / ‖FᴴF‖²_F; 0 for an eigen-factor. It only removes
        the factor's rotation ambiguity, so it should stay a small weight.
    """

    def __init__(self, weights: LossWeights, *, system: SystemConfig,
                 allow_zero_primary: bool = False, peak_offset_deg: float = 3.0,
                 signal_columns: str = "all") -> None:
        super().__init__()
        if isinstance(weights, Mapping):
            weights = LossWeights.from_mapping(weights)
        if not isinstance(weights, LossWeights):
            raise ConfigError(f"HybridLoss needs a LossWeights (one weight per term), but got {weights!r}")
        if 0 < getattr(weights, LossWeights.PRIMARY) < MIN_PRIMARY_WEIGHT:
            raise ConfigError(f"the primary loss weight {LossWeights.PRIMARY!r} is below {MIN_PRIMARY_WEIGHT:g} and "
                              f"vanishes in float32 arithmetic; use a weight >= {MIN_PRIMARY_WEIGHT:g}")
        if getattr(weights, LossWeights.PRIMARY) == 0 and not allow_zero_primary:
            raise ConfigError(f"the primary loss weight {LossWeights.PRIMARY!r} is 0, so nothing would be "
                              f"learned; set it > 0 or pass allow_zero_primary=True for an ablation")
        if signal_columns not in ("all", "count"):
            raise ConfigError(f"signal_columns must be 'all' or 'count', but got {signal_columns!r}")
        if not peak_offset_deg > 0:
            raise ConfigError(f"peak_offset_deg must be > 0, but got {peak_offset_deg=}")
        self.weights = weights
        self.primary = LossWeights.PRIMARY
        self.near_field = system.near_field
        self.k0 = wavenumber(system)
        self.peak_offset = math.radians(peak_offset_deg)
        self.signal_columns = signal_columns
        self.register_buffer("positions", system_positions(system, dtype=torch.float32), persistent=False)

    def set_weights(self, weights: LossWeights) -> None:
        """Swap the weights between steps (schedules, HPO); the caller records the source."""
        self.weights = weights

    # --- terms ------------------------------------------------------------------
    def steering(self, phi: torch.Tensor, theta: torch.Tensor, r: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        positions = self.get_buffer("positions").to(real)
        return ris_steering(phi.to(real), theta.to(real), r.to(real) if self.near_field else None,
                            positions, self.k0).to(dtype)

    def signal_factor(self, factor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The columns whose span the subspace and peak terms score.

        MUSIC with the oracle source count K searches the noise subspace of the K dominant
        directions, so spare columns (K < K_max) must not be allowed to widen the scored
        span around a source: with ``count`` only the first K columns count (the factor
        lists its strongest directions first), the rest are zeroed.
        """
        if self.signal_columns == "all":
            return factor
        count = mask.sum(-1, keepdim=True)  # (B, 1)
        keep = torch.arange(factor.shape[-1], device=factor.device) < count  # (B, K_max)
        return factor * keep.unsqueeze(-2).to(factor.dtype)

    def terms(self, pred: CovPrediction, R: torch.Tensor, phi: torch.Tensor, theta: torch.Tensor,
              r: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        factor = pred.factor
        scale = (factor.shape[-2] / torch.linalg.matrix_norm(factor).pow(2).clamp_min(1e-30)).sqrt()
        factor = factor * scale.to(factor.dtype)[:, None, None]  # tr(FFᴴ) = N: R̂ = FFᴴ exactly
        R_hat = factor @ factor.mH
        R_true = trace_normalise(R.to(factor.dtype))
        cov = (torch.linalg.matrix_norm(R_hat - R_true).pow(2)
               / torch.linalg.matrix_norm(R_true).pow(2).clamp_min(1e-30)).mean()

        weight = mask.to(factor.real.dtype)  # (B, K)
        n_src = weight.sum().clamp_min(1.0)
        signal = self.signal_factor(factor, mask)
        a_true = self.steering(phi, theta, r, factor.dtype)  # (B, K, N)
        e_true = noise_energy(signal, a_true)  # (B, K)
        subspace = (e_true * weight).sum() / n_src

        d = self.peak_offset
        probes = [(phi + d, theta), (phi - d, theta), (phi, theta + d), (phi, theta - d)]
        a_near = torch.cat([self.steering(p, t, r, factor.dtype) for p, t in probes], dim=1)  # (B, 4K, N)
        e_near = noise_energy(signal, a_near).unflatten(1, (4, -1)).mean(1)  # (B, K)
        contrast = e_true / (e_true + e_near).clamp_min(1e-12)
        peak = (contrast * weight).sum() / n_src

        gram = factor.mH @ factor  # (B, K, K)
        off = gram - torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
        ortho = (torch.linalg.matrix_norm(off).pow(2) / torch.linalg.matrix_norm(gram).pow(2).clamp_min(1e-30)).mean()
        return {"cov": cov, "subspace": subspace, "peak": peak, "ortho": ortho}

    def forward(self, pred: CovPrediction, R: torch.Tensor, phi: torch.Tensor, theta: torch.Tensor,
                r: torch.Tensor, mask: torch.Tensor) -> LossOutput:
        terms = self.terms(pred, R, phi, theta, r, mask)
        weights = self.weights.as_dict()
        total = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
        return LossOutput(total=total, terms=terms, weights=weights)


def self_test(loss: HybridLoss, R: torch.Tensor, phi: torch.Tensor, theta: torch.Tensor, r: torch.Tensor,
              mask: torch.Tensor, k_max: int) -> dict[str, float]:
    """Numbers that must hold for any correct loss: every term of loss(R, R), and cov(0, R).

    Run in float64 so that "0" means 0 to ~1e-12, not to float32 rounding. Returns
    ``{"<term>@target": value, ..., "cov@zero": value}``; callers compare against 0 and 1.
    """
    R64 = R.to(torch.complex128)
    exact = CovPrediction.from_covariance(R64, k_max)
    out = {f"{k}@target": float(v) for k, v in loss.terms(exact, R64, phi.double(), theta.double(),
                                                           r.double(), mask).items()}
    zero = CovPrediction(factor=torch.zeros_like(exact.factor))
    out["cov@zero"] = float(loss.terms(zero, R64, phi.double(), theta.double(), r.double(), mask)["cov"])
    return out


__all__ = ["CovPrediction", "HybridLoss", "LossOutput", "noise_energy", "self_test", "trace_normalise"]

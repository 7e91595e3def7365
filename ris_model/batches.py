"""Scenes as training tensors: the model's input features next to the targets.

R_bp is computed once per scene when a split is built, not per step: it is the same
for every epoch of a fixed split, and it dominates the input pipeline's cost.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ris_model.config import SystemConfig
from ris_model.estimators.covariance import r_bp
from ris_model.estimators.covariance_ml import Snapshots
from ris_model.physics import SceneBatch, simulate


@dataclass(frozen=True)
class TrainingScenes:
    """What a training step reads. Every field is batch-first, so slicing is uniform."""

    rbp: torch.Tensor  # (B, N, N) complex64, trace N: the model's input
    snr_db: torch.Tensor  # (B,)
    R: torch.Tensor  # (B, N, N) complex64, trace N: the target
    phi: torch.Tensor  # (B, K) radians
    theta: torch.Tensor  # (B, K) radians
    r: torch.Tensor  # (B, K) metres (inf in far field)
    mask: torch.Tensor  # (B, K) bool
    # the whitened snapshots, for a network that takes likelihood steps (model.unroll_steps)
    y: torch.Tensor  # (B, L, M) complex64, y / sigma
    codes: torch.Tensor  # (B, L, N) complex64
    H: torch.Tensor  # (B, M, N) complex64

    def __len__(self) -> int:
        return self.rbp.shape[0]

    def take(self, index: torch.Tensor | slice) -> TrainingScenes:
        return TrainingScenes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device | str) -> TrainingScenes:
        return TrainingScenes(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def snapshots(self) -> Snapshots:
        return Snapshots(y=self.y, codes=self.codes, H=self.H)

    @classmethod
    def from_scenes(cls, system: SystemConfig, scenes: SceneBatch) -> TrainingScenes:
        rbp = r_bp(scenes.y, scenes.codes, scenes.H).to(torch.complex64)
        snaps = Snapshots.whitened(scenes.y, scenes.codes, scenes.H, scenes.noise_var).to(torch.complex64)
        return cls(rbp=rbp, snr_db=scenes.snr_db.float(), R=scenes.R.to(torch.complex64),
                   phi=scenes.phi.float(), theta=scenes.theta.float(), r=scenes.r.float(),
                   mask=scenes.mask, y=snaps.y, codes=snaps.codes, H=snaps.H)


def build_scenes(system: SystemConfig, n: int, seed: int, *, snr_db=None, k: int | None = None,
                 chunk: int = 2048) -> TrainingScenes:
    """Simulate ``n`` scenes from ``seed`` and compute their features, in memory-bounded chunks."""
    parts = []
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        scenes = simulate(system, count, seed=seed * 1_000_003 + start, snr_db=snr_db, k=k)
        parts.append(TrainingScenes.from_scenes(system, scenes))
    return TrainingScenes(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(TrainingScenes)})

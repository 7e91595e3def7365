"""simulate(): batches of RIS scenes under the snapshot model of docs/physics.md.

For each scene and snapshot l: s_l ~ CN(0, diag(p)), x_l = A s_l at the aperture,
y_l = H diag(c_l) x_l + n_l at the BS, n_l ~ CN(0, sigma^2 I_M). The noise level is set
from the scene's SNR and its *expected* signal power given H, the codes and diag(p), so
the SNR label means the same thing in every scene rather than following the luck of
the drawn symbols.

All random numbers come from one generator, drawn on its device in a fixed order, so a
seed gives the same tensors on every device and whatever the global RNG state is. The
arithmetic runs in float64 / complex128 and is cast to ``dtype`` once at the end.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ris_model.config import SystemConfig
from ris_model.physics.channel import rician_channel
from ris_model.physics.codes import phase_codes
from ris_model.physics.geometry import system_positions, wavenumber
from ris_model.physics.scenes import sample_sources
from ris_model.physics.steering import ris_steering

# Scenes processed together in the dense part of simulate(); bounds the (chunk, K, L, M)
# intermediates (about 100 MB for the paper preset) without costing speed.
_CHUNK = 512


@dataclass(frozen=True, eq=False)
class SceneBatch:
    """B simulated scenes: the receiver's inputs, the targets and the labels.

    Inputs a model may use: ``y``, ``codes``, ``H``, ``snr_db`` (and ``noise_var``).
    Targets: ``R`` and the labels ``phi``, ``theta``, ``r``, ``power`` (padded to K_max;
    padded slots hold 0; ``r`` is inf for the sources of a far-field scene).
    ``R_factor`` is F with R = F F^H (zero columns on padded slots): a cheap exact
    low-rank form of the target.
    """

    y: torch.Tensor  # (B, L, M) complex: received snapshots
    codes: torch.Tensor  # (B, L, N) complex, unit modulus: RIS configuration per snapshot
    H: torch.Tensor  # (B, M, N) complex: RIS -> BS channel
    snr_db: torch.Tensor  # (B,) float
    noise_var: torch.Tensor  # (B,) float: sigma^2
    R: torch.Tensor  # (B, N, N) complex: A diag(p) A^H normalised to trace N
    phi: torch.Tensor  # (B, K_max) float, radians
    theta: torch.Tensor  # (B, K_max) float, radians
    r: torch.Tensor  # (B, K_max) float, metres
    power: torch.Tensor  # (B, K_max) float
    mask: torch.Tensor  # (B, K_max) bool
    k: torch.Tensor  # (B,) long
    R_factor: torch.Tensor  # (B, N, K_max) complex: R = R_factor R_factor^H

    def __post_init__(self) -> None:
        b = self.y.shape[0]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != b:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"every SceneBatch field needs leading batch size {b} but got {f.name} {shape}")

    def __len__(self) -> int:
        return self.y.shape[0]

    def _map(self, fn: Any) -> SceneBatch:
        return SceneBatch(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> SceneBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def index(self, idx: int | slice | Sequence[int] | torch.Tensor) -> SceneBatch:
        """A sub-batch; an int keeps the batch dimension (a batch of one scene)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        elif not isinstance(idx, slice):
            idx = torch.as_tensor(idx, device=self.y.device)
        return self._map(lambda t: t[idx])

    __getitem__ = index

    def row(self, i: int) -> dict[str, torch.Tensor]:
        """Scene ``i`` as a dict of tensors without the batch dimension."""
        return {f.name: getattr(self, f.name)[i] for f in dataclasses.fields(self)}

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> SceneBatch:
        """Rebuild from :meth:`as_dict`; ``R`` may be absent and is then rebuilt from ``R_factor``."""
        tensors = dict(tensors)
        if "R" not in tensors:
            tensors["R"] = covariance_from_factor(tensors["R_factor"])
        names = {f.name for f in dataclasses.fields(cls)}
        missing, extra = names - tensors.keys(), tensors.keys() - names
        if missing or extra:
            raise ValueError(f"SceneBatch fields do not match: missing={sorted(missing)}, unknown={sorted(extra)}")
        return cls(**tensors)

    @classmethod
    def cat(cls, batches: Iterable[SceneBatch]) -> SceneBatch:
        batches = list(batches)
        if not batches:
            raise ValueError("cannot concatenate an empty list of SceneBatch")
        return cls(**{f.name: torch.cat([getattr(b, f.name) for b in batches])
                      for f in dataclasses.fields(cls)})

    def measurement_matrices(self) -> torch.Tensor:
        """Phi_l = H diag(c_l), (B, L, M, N): what snapshot l observes of the aperture field."""
        return self.H.unsqueeze(1) * self.codes.unsqueeze(2)


def covariance_from_factor(factor: torch.Tensor) -> torch.Tensor:
    """R = F F^H, (..., N, N): Hermitian PSD of rank <= K by construction."""
    return factor @ factor.mH


def steering_matrix(system: SystemConfig, phi: torch.Tensor, theta: torch.Tensor,
                    r: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Steering vectors of the sources, (B, K, N) complex (rows a(phi_k, theta_k, r_k), norm 1).

    ``r`` is ignored in a far-field system. Rows of padded slots (``mask`` False) are 0, so
    A^T diag(p) conj(A) needs no further masking. Follows the dtype and device of ``phi``.
    """
    positions = system_positions(system, dtype=phi.dtype, device=phi.device)
    a = ris_steering(phi, theta, r if system.near_field else None, positions, wavenumber(system))
    if mask is not None:
        a = a * mask.unsqueeze(-1).to(a.dtype)
    return a


def _make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if seed is not None and generator is not None:
        raise ValueError(f"pass a seed or a generator, not both, but got {seed=} and a generator")
    if generator is not None:
        return generator
    gen = torch.Generator()  # CPU: the same draws whatever device the scenes end up on
    if seed is None:
        gen.seed()  # fresh entropy, independent of the global RNG state
    else:
        gen.manual_seed(int(seed))
    return gen


def _snr_per_scene(system: SystemConfig, n: int, snr_db: Any, generator: torch.Generator) -> torch.Tensor:
    """(n,) float64 dB on the generator's device."""
    gdev = generator.device
    if snr_db is None:
        snr_db = (system.snr_min_db, system.snr_max_db)
    if isinstance(snr_db, torch.Tensor):
        snr = snr_db.detach().to(device=gdev, dtype=torch.float64)
        if snr.ndim == 0:
            return snr.expand(n).clone()
        if snr.shape != (n,):
            raise ValueError(f"a tensor snr_db must be a scalar or have shape ({n},) but got {tuple(snr.shape)}")
        return snr.clone()
    if isinstance(snr_db, (tuple, list)):
        if len(snr_db) != 2 or snr_db[0] > snr_db[1]:
            raise ValueError(f"snr_db as a range must be (low, high) with low <= high but got {snr_db=}")
        lo, hi = float(snr_db[0]), float(snr_db[1])
        u = torch.rand(n, generator=generator, device=gdev, dtype=torch.float64)
        return lo + (hi - lo) * u
    value = float(snr_db)
    if not math.isfinite(value):
        raise ValueError(f"snr_db must be finite but got {snr_db=}")
    return torch.full((n,), value, dtype=torch.float64, device=gdev)


def simulate(system: SystemConfig, n: int, *, seed: int | None = None,
             generator: torch.Generator | None = None,
             snr_db: float | tuple[float, float] | torch.Tensor | None = None,
             k: int | None = None, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.complex64) -> SceneBatch:
    """``n`` scenes of ``system``; see the module docstring for the model.

    snr_db: None draws each scene's SNR uniformly from the system's range; a float fixes
    it; a (low, high) pair draws from that range; a tensor gives it per scene.
    k: a fixed number of sources for every scene (1..k_max), else uniform in [k_min, k_max].
    device: where the returned tensors live (default: the generator's device, CPU for a seed).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"the number of scenes must be a positive int but got {n=}")
    n = int(n)
    if not dtype.is_complex:
        raise ValueError(f"dtype must be a complex dtype but got {dtype=}")
    gen = _make_generator(seed, generator)
    device = torch.device(device) if device is not None else gen.device
    real = dtype.to_real()

    # Every random number, in a fixed order, on the generator's device. H and the codes are
    # rounded to ``dtype`` before use, so the stored inputs are exactly the ones that made y.
    src = sample_sources(system, n, generator=gen, k=k)
    H = rician_channel(system, n, generator=gen).to(device=device, dtype=dtype)  # (B, M, N)
    codes = phase_codes(system, n, generator=gen, dtype=dtype).to(device)  # (B, L, N)
    snr = _snr_per_scene(system, n, snr_db, gen).to(device)  # (B,)
    L, M, K = system.snapshots, system.bs_antennas, system.k_max
    sym = torch.randn(n, L, K, generator=gen, device=gen.device, dtype=torch.complex128).to(device)  # CN(0, 1)
    noise = torch.randn(n, L, M, generator=gen, device=gen.device, dtype=torch.complex128).to(device)
    src = src.to(device)

    A = steering_matrix(system, src.phi, src.theta, src.r, src.mask)  # (B, K, N)
    s = sym * src.power.sqrt().unsqueeze(1)  # (B, L, K): s_l ~ CN(0, diag(p)), 0 on padded slots
    y = torch.empty(n, L, M, dtype=dtype, device=device)
    noise_var = torch.empty(n, dtype=torch.float64, device=device)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        b = len(range(*sl.indices(n)))
        ha = H[sl].to(torch.complex128).unsqueeze(1) * A[sl].unsqueeze(2)  # (b, K, M, N): H diag(a_k)
        v = codes[sl].to(torch.complex128) @ ha.reshape(b, K * M, -1).mT  # (b, L, K*M)
        v = v.view(b, L, K, M)  # Phi_l a_k
        y_clean = torch.einsum("blk,blkm->blm", s[sl], v)  # (b, L, M)
        # E|y_lm|^2 given H, codes and diag(p), averaged over snapshots and antennas.
        per_source = v.abs().square().sum(dim=(1, 3)) / (L * M)  # (b, K)
        signal_power = (per_source * src.power[sl]).sum(-1)  # (b,)
        noise_var[sl] = signal_power / 10.0 ** (snr[sl] / 10.0)
        y[sl] = y_clean + noise[sl] * noise_var[sl].sqrt()[:, None, None]

    weight = src.power / src.power.sum(-1, keepdim=True) * system.n_elements  # trace R = N
    factor = (A * weight.sqrt().unsqueeze(-1)).mT.to(dtype)  # (B, N, K)
    return SceneBatch(
        y=y, codes=codes, H=H, snr_db=snr.to(real), noise_var=noise_var.to(real),
        R=covariance_from_factor(factor), phi=src.phi.to(real), theta=src.theta.to(real),
        r=src.r.to(real), power=src.power.to(real), mask=src.mask, k=src.k, R_factor=factor)

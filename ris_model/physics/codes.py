"""RIS phase configurations c_l, one per snapshot, known to the receiver.

Each snapshot observes the aperture through a different code, which is what lets L
snapshots of M < N measurements recover an N x N covariance: the codes must differ
between snapshots, and they must be unit modulus (a passive RIS only shifts phases).
"""

from __future__ import annotations

import math

import torch

from ris_model.config import SystemConfig


def random_phase_codes(n: int, snapshots: int, elements: int, bits: int, *,
                       generator: torch.Generator, dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """Phases drawn uniformly from the 2**bits levels 2*pi*i / 2**bits, (n, L, N) complex.

    Quantised because a practical RIS element has a few phase states, not a continuum.
    Drawn on the generator's device.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"code bits must be in 1..16 but got {bits=}")
    levels = 2 ** bits
    idx = torch.randint(levels, (n, snapshots, elements), generator=generator, device=generator.device)
    # A table lookup: far cheaper than evaluating cos/sin (or polar) per element.
    angle = torch.arange(levels, dtype=torch.float64, device=generator.device) * (2 * math.pi / levels)
    table = torch.polar(torch.ones_like(angle), angle).to(dtype)  # (levels,)
    return torch.take(table, idx)


def dft_codebook(nx: int, ny: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The N = nx * ny two-dimensional DFT beams of the aperture, (N, N) complex128, one per row.

    Row (i, j) (flattened i * ny + j) has entries exp(2j*pi*(i*ix/nx + j*iy/ny)) at element
    n = ix * ny + iy, the element order of :func:`ris_positions`. The rows are orthogonal,
    so N distinct DFT codes observe the aperture without redundancy.
    """
    ix = torch.arange(nx, dtype=torch.float64, device=device)
    iy = torch.arange(ny, dtype=torch.float64, device=device)
    px = 2 * math.pi * torch.outer(ix, ix) / nx  # (nx beams, nx elements)
    py = 2 * math.pi * torch.outer(iy, iy) / ny
    phase = px[:, None, :, None] + py[None, :, None, :]  # (nx, ny, nx, ny)
    phase = phase.reshape(nx * ny, nx * ny)
    return torch.polar(torch.ones_like(phase), phase)


def dft_codes(n: int, snapshots: int, nx: int, ny: int, *, generator: torch.Generator,
              dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """L DFT beams per scene in a random order, (n, L, N) complex.

    The order is drawn per scene so that, when L < N, different scenes see different beams;
    when L > N the scene's permutation repeats.
    """
    elements = nx * ny
    book = dft_codebook(nx, ny, device=generator.device).to(dtype)  # (N, N)
    keys = torch.rand(n, elements, generator=generator, device=generator.device, dtype=torch.float64)
    perm = keys.argsort(dim=-1)  # (n, N)
    slot = torch.arange(snapshots, device=generator.device) % elements
    return book[perm[:, slot]]  # (n, L, N)


def phase_codes(system: SystemConfig, n: int, *, generator: torch.Generator,
                dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """The codes of ``n`` scenes under ``system.codebook``, (n, L, N) complex."""
    if system.codebook == "random":
        return random_phase_codes(n, system.snapshots, system.n_elements, system.code_bits,
                                  generator=generator, dtype=dtype)
    if system.codebook == "dft":
        return dft_codes(n, system.snapshots, system.nx, system.ny, generator=generator, dtype=dtype)
    raise ValueError(f"unknown codebook; choose 'random' or 'dft' but got {system.codebook=}")

"""RIS phase codes and the Rician RIS -> BS channel."""

import dataclasses
import math

import torch

from ris_model.config import load_config
from ris_model.physics import dft_codebook, phase_codes, random_phase_codes, rician_channel


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_codes_are_unit_modulus_and_quantised_to_2_pow_b_phases():
    for bits in (1, 2, 3):
        c = random_phase_codes(20, 16, 9, bits, generator=_gen(bits))
        assert c.shape == (20, 16, 9)
        torch.testing.assert_close(c.abs(), torch.ones_like(c.real))
        steps = torch.angle(c) / (2 * math.pi / 2 ** bits)
        torch.testing.assert_close(steps, steps.round(), atol=1e-9, rtol=0)
        levels = torch.unique(steps.round().remainder(2 ** bits))
        assert levels.numel() == 2 ** bits  # every level is used


def test_dft_codebook_rows_are_orthogonal_unit_modulus():
    book = dft_codebook(4, 3)
    assert book.shape == (12, 12)
    torch.testing.assert_close(book.abs(), torch.ones(12, 12, dtype=torch.float64))
    torch.testing.assert_close(book @ book.mH, 12 * torch.eye(12, dtype=torch.complex128))


def test_dft_option_draws_distinct_beams_per_scene():
    system = dataclasses.replace(load_config("tiny").system, codebook="dft", snapshots=10)
    c = phase_codes(system, 5, generator=_gen())
    book = dft_codebook(system.nx, system.ny)
    assert c.shape == (5, 10, system.n_elements)
    # Each code is one of the beams, and no beam repeats within a scene while L <= N.
    match = (c.unsqueeze(-2) - book).abs().amax(-1) < 1e-12  # (5, 10, N)
    assert (match.sum(-1) == 1).all()
    assert (match.sum(1) <= 1).all()


def test_channel_has_unit_power_per_entry_for_any_kappa():
    base = load_config("tiny").system
    for kappa in (0.0, 1.0, 20.0):
        H = rician_channel(dataclasses.replace(base, rician_k=kappa), 4000, generator=_gen(3))
        assert H.shape == (4000, base.bs_antennas, base.n_elements)
        assert abs(H.abs().square().mean().item() - 1.0) < 0.02


def test_strong_line_of_sight_makes_the_channel_nearly_rank_one():
    base = load_config("small").system
    sv_los = torch.linalg.svdvals(rician_channel(dataclasses.replace(base, rician_k=1e6), 20, generator=_gen()))
    sv_ray = torch.linalg.svdvals(rician_channel(dataclasses.replace(base, rician_k=0.0), 20, generator=_gen()))
    assert (sv_los[:, 1] / sv_los[:, 0]).max() < 1e-2
    assert (sv_ray[:, 1] / sv_ray[:, 0]).min() > 0.1

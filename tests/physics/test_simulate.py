"""simulate(): shapes, the covariance target, the SNR definition, reproducibility."""

import dataclasses
import math

import pytest
import torch

from ris_model.config import load_config
from ris_model.physics import SceneBatch, ris_steering, simulate, steering_matrix, system_positions, wavenumber

TINY = load_config("tiny").system
SMALL = load_config("small").system


def _aperture_covariance(system, batch):
    """sum_k p_k a_k a_k^H from the labels, built independently of simulate()."""
    pos, k0 = system_positions(system), wavenumber(system)
    r = batch.r.double() if system.near_field else None
    a = ris_steering(batch.phi.double(), batch.theta.double(), r, pos, k0)  # (B, K, N)
    a = a * batch.mask.unsqueeze(-1)
    return torch.einsum("bkn,bk,bkm->bnm", a, batch.power.double().to(a.dtype), a.conj())


def test_shapes_and_dtypes():
    b = simulate(SMALL, 5, seed=0)
    L, M, N, K = SMALL.snapshots, SMALL.bs_antennas, SMALL.n_elements, SMALL.k_max
    expected = {"y": (5, L, M), "codes": (5, L, N), "H": (5, M, N), "snr_db": (5,), "noise_var": (5,),
                "R": (5, N, N), "phi": (5, K), "theta": (5, K), "r": (5, K), "power": (5, K),
                "mask": (5, K), "k": (5,), "R_factor": (5, N, K)}
    assert {name: tuple(t.shape) for name, t in b.as_dict().items()} == expected
    assert b.y.dtype == torch.complex64 and b.phi.dtype == torch.float32 and b.mask.dtype == torch.bool
    assert b.k.dtype == torch.long
    b64 = simulate(SMALL, 2, seed=0, dtype=torch.complex128)
    assert b64.y.dtype == torch.complex128 and b64.snr_db.dtype == torch.float64


def test_covariance_is_hermitian_psd_rank_k_trace_n():
    b = simulate(SMALL, 40, seed=1, dtype=torch.complex128)
    R = b.R
    torch.testing.assert_close(R, R.mH)
    eig = torch.linalg.eigvalsh(R)  # ascending
    assert (eig > -1e-10 * eig[:, -1:]).all()
    rank = (eig > 1e-6 * eig[:, -1:]).sum(-1)
    assert torch.equal(rank, b.k)
    torch.testing.assert_close(R.diagonal(dim1=-2, dim2=-1).real.sum(-1),
                               torch.full((40,), float(SMALL.n_elements), dtype=torch.float64))
    # And it is A diag(p) A^H of the labels, up to the trace normalisation.
    rx = _aperture_covariance(SMALL, b)
    torch.testing.assert_close(R, rx * SMALL.n_elements / rx.diagonal(dim1=-2, dim2=-1).real.sum(-1)[:, None, None])
    torch.testing.assert_close(b.R_factor @ b.R_factor.mH, R)


def test_snr_is_expected_signal_power_per_antenna_over_noise():
    b = simulate(TINY, 30, seed=2, dtype=torch.complex128)
    phi_l = b.measurement_matrices()  # (B, L, M, N)
    signal = (phi_l @ _aperture_covariance(TINY, b).unsqueeze(1) @ phi_l.mH)
    signal = signal.diagonal(dim1=-2, dim2=-1).real.mean((-1, -2))  # mean over snapshots and antennas
    torch.testing.assert_close(10 * torch.log10(signal / b.noise_var), b.snr_db)
    assert b.snr_db.min() >= TINY.snr_min_db and b.snr_db.max() <= TINY.snr_max_db


def test_noise_power_matches_snr_empirically():
    system = dataclasses.replace(TINY, snapshots=1024)
    # At -30 dB the received power is the noise (to 0.1%): its sample mean checks sigma^2.
    noisy = simulate(system, 20, seed=3, snr_db=-30.0, dtype=torch.complex128)
    ratio = noisy.y.abs().square().mean((1, 2)) / noisy.noise_var
    assert (ratio - 1).abs().max() < 0.1
    # At +10 dB the sample power is signal + noise = (1 + 10^-1) sigma^2 * 10 on average.
    clean = simulate(system, 20, seed=3, snr_db=10.0, dtype=torch.complex128)
    ratio = clean.y.abs().square().mean((1, 2)) / (clean.noise_var * 11.0)
    assert (ratio.mean() - 1).abs() < 0.05


def test_measurement_matrices_are_h_diag_c():
    b = simulate(TINY, 3, seed=4)
    phi_l = b.measurement_matrices()
    assert phi_l.shape == (3, TINY.snapshots, TINY.bs_antennas, TINY.n_elements)
    torch.testing.assert_close(phi_l[1, 5], b.H[1] @ torch.diag(b.codes[1, 5]))


def test_received_snapshots_follow_the_model():
    """With no noise, y_l = Phi_l A s_l: y_l lies in the span of {Phi_l a_k}."""
    b = simulate(SMALL, 4, seed=5, snr_db=200.0, dtype=torch.complex128, k=1)
    a = steering_matrix(SMALL, b.phi, b.theta, b.r, b.mask)[:, 0]  # (B, N)
    v = (b.measurement_matrices() @ a[:, None, :, None]).squeeze(-1)  # (B, L, M)
    s = (v.conj() * b.y).sum(-1) / v.abs().square().sum(-1)  # least-squares symbol per snapshot
    torch.testing.assert_close(s.unsqueeze(-1) * v, b.y)
    # The symbols are CN(0, p): their sample power matches the label.
    torch.testing.assert_close(s.abs().square().mean(-1), b.power[:, 0].double(), rtol=0.35, atol=0)


def test_codes_unit_modulus_and_quantised():
    b = simulate(SMALL, 4, seed=6, dtype=torch.complex128)
    torch.testing.assert_close(b.codes.abs(), torch.ones_like(b.codes.real))
    steps = torch.angle(b.codes) / (2 * math.pi / 2 ** SMALL.code_bits)
    torch.testing.assert_close(steps, steps.round(), atol=1e-9, rtol=0)


def test_reproducible_per_seed_and_independent_of_global_rng():
    torch.manual_seed(123)
    a = simulate(SMALL, 6, seed=7)
    torch.manual_seed(999)
    torch.rand(10)
    b = simulate(SMALL, 6, seed=7)
    c = simulate(SMALL, 6, generator=torch.Generator().manual_seed(7))
    d = simulate(SMALL, 6, seed=8)
    for name, value in a.as_dict().items():
        assert torch.equal(value, getattr(b, name)), name
        assert torch.equal(value, getattr(c, name)), name
    assert not torch.equal(a.y, d.y) and not torch.equal(a.phi, d.phi)


def test_far_field_and_fixed_k():
    b = simulate(TINY, 50, seed=9, k=2)
    assert (b.k == 2).all() and b.mask.all()
    assert torch.isinf(b.r).all()
    b = simulate(TINY, 50, seed=9)
    assert torch.isinf(b.r[b.mask]).all() and (b.r[~b.mask] == 0).all()


def test_snr_argument_forms():
    assert (simulate(TINY, 4, seed=0, snr_db=3.0).snr_db == 3.0).all()
    s = simulate(TINY, 200, seed=0, snr_db=(0.0, 1.0)).snr_db
    assert s.min() >= 0.0 and s.max() <= 1.0 and s.std() > 0.1
    per_scene = torch.tensor([0.0, 5.0, 10.0])
    torch.testing.assert_close(simulate(TINY, 3, seed=0, snr_db=per_scene).snr_db, per_scene)
    with pytest.raises(ValueError, match="shape"):
        simulate(TINY, 4, seed=0, snr_db=per_scene)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="n=0"):
        simulate(TINY, 0, seed=0)
    with pytest.raises(ValueError, match="seed=1"):
        simulate(TINY, 2, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="dtype"):
        simulate(TINY, 2, seed=1, dtype=torch.float32)


def test_dft_codebook_through_simulate():
    b = simulate(dataclasses.replace(TINY, codebook="dft"), 3, seed=0, dtype=torch.complex128)
    torch.testing.assert_close(b.codes.abs(), torch.ones_like(b.codes.real))


def test_batch_indexing_concatenation_and_device_moves():
    b = simulate(TINY, 8, seed=10)
    assert len(b) == 8
    assert len(b[2:5]) == 3 and len(b.index(3)) == 1 and len(b[[0, 7]]) == 2
    assert torch.equal(b.index(3).y[0], b.y[3])
    assert torch.equal(b[torch.tensor([1, 6])].phi, b.phi[[1, 6]])
    joined = SceneBatch.cat([b[:3], b[3:]])
    assert all(torch.equal(v, getattr(joined, k)) for k, v in b.as_dict().items())
    moved = b.to("cpu")
    assert moved.y.device.type == "cpu"
    row = b.row(2)
    assert row["y"].shape == b.y.shape[1:]
    rebuilt = SceneBatch.from_dict({k: v for k, v in b.as_dict().items() if k != "R"})
    torch.testing.assert_close(rebuilt.R, b.R)
    with pytest.raises(ValueError, match="batch size"):
        SceneBatch(**{**b.as_dict(), "k": b.k[:3]})

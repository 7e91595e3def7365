"""Steering vectors: unit norm, and the exact spherical wave tends to the far-field one."""

import math

import torch

from ris_model.config import load_config
from ris_model.physics import ris_steering, steering_matrix, system_positions, ula_steering, wavenumber


def _angles(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    phi = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * math.radians(120)
    theta = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * math.radians(60)
    return phi, theta


def test_ris_steering_has_unit_norm_near_and_far():
    system = load_config("small").system
    pos, k0 = system_positions(system), wavenumber(system)
    phi, theta = _angles(50)
    r = torch.linspace(0.3, 20.0, 50, dtype=torch.float64)
    for rr in (r, None):
        a = ris_steering(phi, theta, rr, pos, k0)
        assert a.shape == (50, system.n_elements)
        torch.testing.assert_close(torch.linalg.vector_norm(a, dim=-1), torch.ones(50, dtype=torch.float64))


def test_near_field_tends_to_far_field_at_large_range():
    system = load_config("paper").system
    pos, k0 = system_positions(system), wavenumber(system)
    phi, theta = _angles(20, seed=1)
    far = ris_steering(phi, theta, None, pos, k0)
    # Fresnel phase error ~ k0 * aperture^2 / (2 r): ~1e-5 rad at 1e6 m, O(1) at 1 m.
    very_far = ris_steering(phi, theta, torch.full_like(phi, 1e6), pos, k0)
    near = ris_steering(phi, theta, torch.full_like(phi, 1.0), pos, k0)
    assert (very_far - far).abs().max() * math.sqrt(system.n_elements) < 1e-4
    assert (near - far).abs().max() * math.sqrt(system.n_elements) > 0.1
    # Far field is a plane wave: exp(j k0 u.q) / sqrt(N), checked element by element.
    u = torch.stack([torch.sin(phi) * torch.cos(theta), torch.sin(theta), torch.cos(phi) * torch.cos(theta)], -1)
    expected = torch.exp(1j * k0 * (u @ pos.T)) / math.sqrt(system.n_elements)
    torch.testing.assert_close(far, expected)


def test_ula_steering_is_unit_modulus_half_wavelength():
    psi = torch.tensor([0.0, 0.3, -1.0], dtype=torch.float64)
    a = ula_steering(psi, 6)
    torch.testing.assert_close(a.abs(), torch.ones(3, 6, dtype=torch.float64))
    # Adjacent elements half a wavelength apart differ in phase by pi sin(psi).
    torch.testing.assert_close(a[:, 1] / a[:, 0], torch.exp(1j * math.pi * torch.sin(psi)))


def test_steering_matrix_zeroes_padded_slots_and_ignores_range_in_far_field():
    near = load_config("small").system
    far = load_config("tiny").system
    phi, theta = _angles(6, seed=2)
    phi, theta = phi.view(2, 3), theta.view(2, 3)
    r = torch.full_like(phi, 2.0)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    a = steering_matrix(near, phi, theta, r, mask)
    assert a.shape == (2, 3, near.n_elements)
    assert (a[~mask] == 0).all()
    torch.testing.assert_close(torch.linalg.vector_norm(a[mask], dim=-1), torch.ones(3, dtype=torch.float64))
    a_far = steering_matrix(far, phi, theta, r)
    torch.testing.assert_close(a_far, steering_matrix(far, phi, theta, None))

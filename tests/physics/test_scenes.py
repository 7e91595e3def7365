"""Scene sampling: counts and masks, the angle box, ranges, powers, minimum separation."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from ris_model.config import load_config
from ris_model.physics import SceneSamplingError, sample_sources


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_counts_masks_and_padding_are_consistent():
    system = dataclasses.replace(load_config("paper").system, k_min=2)
    src = sample_sources(system, 3000, generator=_gen())
    assert src.k.min() == 2 and src.k.max() == system.k_max
    assert set(src.k.tolist()) == set(range(2, system.k_max + 1))
    assert (src.mask.sum(-1) == src.k).all()
    # Sources occupy the first k slots; every padded quantity is 0.
    assert (src.mask[:, :-1] | ~src.mask[:, 1:]).all()
    for value in (src.phi, src.theta, src.r, src.power):
        assert (value[~src.mask] == 0).all()


def test_labels_lie_in_the_configured_ranges():
    system = load_config("small").system
    src = sample_sources(system, 2000, generator=_gen(1))
    m = src.mask
    assert src.phi[m].abs().max() <= math.radians(system.phi_max_deg)
    assert src.theta[m].abs().max() <= math.radians(system.theta_max_deg)
    assert src.r[m].min() >= system.r_min and src.r[m].max() <= system.r_max
    assert src.power[m].min() >= system.power_min and src.power[m].max() <= system.power_max
    # Uniform, not clustered: the box is filled to its edges.
    assert src.phi[m].abs().max() > 0.95 * math.radians(system.phi_max_deg)


def test_far_field_ranges_are_infinite():
    src = sample_sources(load_config("tiny").system, 100, generator=_gen())
    assert torch.isinf(src.r[src.mask]).all()


def test_fixed_k_and_bad_k():
    system = load_config("small").system
    assert (sample_sources(system, 10, generator=_gen(), k=2).k == 2).all()
    with pytest.raises(ValueError, match="k=4"):
        sample_sources(system, 10, generator=_gen(), k=4)


def test_minimum_separation_is_respected():
    system = dataclasses.replace(load_config("paper").system, min_separation_deg=20.0)
    src = sample_sources(system, 500, generator=_gen(2), k=5)
    phi, theta = src.phi.numpy(), src.theta.numpy()
    u = np.stack([np.sin(phi) * np.cos(theta), np.sin(theta), np.cos(phi) * np.cos(theta)], -1)
    cos = np.clip(np.einsum("bkd,bjd->bkj", u, u), -1, 1)
    dist = np.degrees(np.arccos(cos)) + np.eye(5) * 1e3
    assert dist.min() >= 20.0
    # The constraint binds: without it, 500 scenes of 5 sources would have close pairs.
    loose = sample_sources(dataclasses.replace(system, min_separation_deg=0.0), 500, generator=_gen(2), k=5)
    u = torch.stack([torch.sin(loose.phi) * torch.cos(loose.theta), torch.sin(loose.theta),
                     torch.cos(loose.phi) * torch.cos(loose.theta)], -1).numpy()
    cos = np.clip(np.einsum("bkd,bjd->bkj", u, u), -1, 1)
    assert (np.degrees(np.arccos(cos)) + np.eye(5) * 1e3).min() < 20.0


def test_impossible_separation_raises_a_clear_error():
    system = dataclasses.replace(load_config("paper").system, min_separation_deg=60.0, k_max=8,
                                 phi_max_deg=20.0, theta_max_deg=10.0)
    with pytest.raises(SceneSamplingError, match="min_separation_deg"):
        sample_sources(system, 4, generator=_gen(), k=8)

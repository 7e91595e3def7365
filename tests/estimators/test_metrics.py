import math

import numpy as np
import pytest
import torch

from ris_model.estimators import Estimates
from ris_model.evaluation.metrics import evaluate_estimates, localization_metrics, match_sources

INF = math.inf


def _deg(*values: float) -> torch.Tensor:
    return torch.tensor([list(map(math.radians, values))], dtype=torch.float64)


def _u(phi_deg: float, theta_deg: float) -> np.ndarray:
    p, t = math.radians(phi_deg), math.radians(theta_deg)
    return np.array([math.sin(p) * math.cos(t), math.sin(t), math.cos(p) * math.cos(t)])


def _angle_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    # half-chord form: accurate for small angles, independent of the code under test
    chord = np.linalg.norm(_u(*a) - _u(*b))
    return math.degrees(2 * math.asin(chord / 2))


def _est(phi, theta, r, mask) -> Estimates:
    b, k = phi.shape
    return Estimates(phi=phi, theta=theta, r=r, mask=mask, k=mask.sum(-1), score=torch.zeros(b, k))


def test_hand_checked_far_field_example():
    # truths (10, 0) and (-20, 5); estimates listed in the other order, each off by a little
    truth = [(10.0, 0.0), (-20.0, 5.0)]
    guess = [(-19.0, 5.0), (10.5, -1.0)]
    est = _est(_deg(-19.0, 10.5), _deg(5.0, -1.0), torch.full((1, 2), INF), torch.ones(1, 2, dtype=torch.bool))
    m = evaluate_estimates(est, _deg(10.0, -20.0), _deg(0.0, 5.0), torch.full((1, 2), INF),
                           torch.ones(1, 2, dtype=torch.bool))
    # the matching pairs each estimate with its neighbour: errors phi (0.5, 1.0), theta (-1, 0)
    assert m["rmse_phi_deg"] == pytest.approx(math.sqrt((0.5**2 + 1.0**2) / 2), rel=1e-9)
    assert m["rmse_theta_deg"] == pytest.approx(math.sqrt((1.0**2 + 0.0**2) / 2), rel=1e-9)
    angles = [_angle_deg(guess[1], truth[0]), _angle_deg(guess[0], truth[1])]
    assert m["rmse_angle_deg"] == pytest.approx(math.sqrt(np.mean(np.square(angles))), rel=1e-6)
    # (-19, 5) is 1 deg of azimuth at 5 deg elevation: cos(5 deg) < 1 deg away; the other is not
    assert angles[1] < 1.0 < angles[0]
    assert m["within_1deg"] == pytest.approx(0.5)
    assert m["rmse_r_m"] is None and m["rmse_pos_m"] is None
    assert (m["n_matched"], m["n_estimates"], m["n_sources"]) == (2, 2, 2)


def test_hand_checked_near_field_range_and_position():
    # same direction, range off by 0.5 m: position error 0.5 m; second source exact in
    # direction with range 3 -> 2 m off by 1 m; pooled over the two sources of two scenes
    phi, theta = _deg(0.0, 30.0).reshape(2, 1), _deg(0.0, 10.0).reshape(2, 1)
    mask = torch.ones(2, 1, dtype=torch.bool)
    est = _est(phi, theta, torch.tensor([[2.5], [2.0]], dtype=torch.float64), mask)
    m = evaluate_estimates(est, phi, theta, torch.tensor([[2.0], [3.0]], dtype=torch.float64), mask)
    assert m["rmse_r_m"] == pytest.approx(math.sqrt((0.25 + 1.0) / 2))
    assert m["rmse_pos_m"] == pytest.approx(math.sqrt((0.25 + 1.0) / 2))
    assert m["rmse_phi_deg"] == pytest.approx(0.0, abs=1e-12)
    assert m["within_1deg"] == 1.0


def test_hand_checked_position_error_off_axis():
    # truth at 2 m straight ahead; estimate at 2 m, 3 deg to the side: chord 2 * 2 sin(1.5 deg)
    est = _est(_deg(3.0), _deg(0.0), torch.tensor([[2.0]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool))
    m = evaluate_estimates(est, _deg(0.0), _deg(0.0), torch.tensor([[2.0]], dtype=torch.float64),
                           torch.ones(1, 1, dtype=torch.bool))
    assert m["rmse_pos_m"] == pytest.approx(4 * math.sin(math.radians(1.5)), rel=1e-9)
    assert m["rmse_r_m"] == pytest.approx(0.0, abs=1e-12)
    assert m["within_1deg"] == 0.0


def test_precision_recall_f1_with_an_estimated_count():
    # 3 estimates for 2 sources: one estimate 0.2 deg from a source, one 4 deg from the other,
    # one far from both. At a 1 deg tolerance: 1 hit; P = 1/3, R = 1/2, F1 = 0.4.
    est = _est(_deg(0.2, 24.0, -50.0), _deg(0.0, 0.0, 20.0), torch.full((1, 3), INF),
               torch.ones(1, 3, dtype=torch.bool))
    truth = (_deg(0.0, 20.0), _deg(0.0, 0.0), torch.full((1, 2), INF), torch.ones(1, 2, dtype=torch.bool))
    m = evaluate_estimates(est, *truth, tolerance_deg=1.0)
    assert (m["precision"], m["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert m["f1"] == pytest.approx(0.4)
    assert m["n_matched"] == 2  # rectangular assignment: min(3, 2) pairs, the far one is left over
    m5 = evaluate_estimates(est, *truth, tolerance_deg=5.0)
    assert (m5["precision"], m5["recall"], m5["f1"]) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))


def test_masked_slots_are_ignored():
    phi, theta = _deg(5.0, 99.0), _deg(1.0, 99.0)
    mask = torch.tensor([[True, False]])
    est = _est(phi.clone(), theta.clone(), torch.full((1, 2), INF), mask)
    m = evaluate_estimates(est, phi, theta, torch.full((1, 2), INF), mask)
    assert m["n_sources"] == 1 and m["rmse_phi_deg"] == pytest.approx(0.0, abs=1e-12)


def test_matching_is_invariant_to_permuting_estimates_and_truths():
    g = torch.Generator().manual_seed(0)
    b, k = 20, 4
    phi = (torch.rand(b, k, generator=g, dtype=torch.float64) - 0.5) * 2
    theta = (torch.rand(b, k, generator=g, dtype=torch.float64) - 0.5)
    r = 1 + 9 * torch.rand(b, k, generator=g, dtype=torch.float64)
    mask = torch.rand(b, k, generator=g) < 0.8
    e_phi = phi + 0.05 * torch.randn(b, k, generator=g, dtype=torch.float64)
    e_theta = theta + 0.05 * torch.randn(b, k, generator=g, dtype=torch.float64)
    e_r = r + torch.randn(b, k, generator=g, dtype=torch.float64)
    e_mask = torch.rand(b, k, generator=g) < 0.8
    base = localization_metrics(match_sources(e_phi, e_theta, e_r, e_mask, phi, theta, r, mask))
    pe, pt = torch.randperm(k, generator=g), torch.randperm(k, generator=g)
    perm = localization_metrics(match_sources(e_phi[:, pe], e_theta[:, pe], e_r[:, pe], e_mask[:, pe],
                                              phi[:, pt], theta[:, pt], r[:, pt], mask[:, pt]))
    for key, value in base.items():
        assert perm[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_hungarian_beats_greedy_nearest():
    # truths at phi 0 and 1.9 deg, estimates at 1.0 and 3.0 deg. Greedy nearest-first pairs
    # estimate 0 with truth 1 (0.9 deg), leaving 3.0 deg for the other pair (3.9 in total);
    # the optimal assignment is 0-0 (1.0) and 1-1 (1.1), 2.1 in total.
    ones = torch.ones(1, 2, dtype=torch.bool)
    far = torch.full((1, 2), INF)
    m = match_sources(_deg(1.0, 3.0), _deg(0.0, 0.0), far, ones, _deg(0.0, 1.9), _deg(0.0, 0.0), far, ones)
    assert sorted(zip(m.est_index.tolist(), m.true_index.tolist())) == [(0, 0), (1, 1)]
    assert float(np.degrees(m.angle).sum()) == pytest.approx(2.1, abs=1e-9)

import numpy as np
import pytest
import torch

from ris_model.baseline import estimator_row
from ris_model.config import load_config
from ris_model.estimators import localize, r_ls
from ris_model.evaluation.bootstrap import LEAD_KEYS, SceneTotals, paired_lead
from ris_model.evaluation.metrics import match_sources
from ris_model.physics import simulate


@pytest.fixture(scope="module")
def scenes_and_estimates():
    system = load_config("tiny").system
    s = simulate(system, 200, seed=31, snr_db=10.0)
    truth = localize(s.R.to(torch.complex128), system, s.k)
    classical = localize(r_ls(s.y, s.codes, s.H, s.noise_var, ridge_scale=system.ls_ridge_scale), system, s.k)
    return system, s, truth, classical


def _totals(est, s) -> SceneTotals:
    return SceneTotals.of(match_sources(est.phi, est.theta, est.r, est.mask, s.phi, s.theta, s.r, s.mask), s.mask)


def test_pooled_over_every_scene_is_the_reported_row(scenes_and_estimates):
    system, s, _, classical = scenes_and_estimates
    row = estimator_row(system, classical, s)
    pooled = _totals(classical, s).pooled(np.arange(len(s))[None])[0]
    np.testing.assert_allclose(pooled, [row["rmse_phi_deg"], row["rmse_theta_deg"], row["within_1deg"]], rtol=1e-9)


def test_a_clear_lead_has_an_interval_above_zero_and_reverses_with_the_order(scenes_and_estimates):
    _, s, truth, classical = scenes_and_estimates
    exact, noisy = _totals(truth, s), _totals(classical, s)
    lead = paired_lead(exact, noisy, resamples=500)
    for key in LEAD_KEYS:
        assert 0 < lead[key]["low"] <= lead[key]["lead"] <= lead[key]["high"]
    back = paired_lead(noisy, exact, resamples=500)
    for key in LEAD_KEYS:
        assert back[key]["lead"] == pytest.approx(-lead[key]["lead"]) and back[key]["high"] < 0


def test_an_estimator_against_itself_leads_by_nothing(scenes_and_estimates):
    _, s, _, classical = scenes_and_estimates
    same = _totals(classical, s)
    lead = paired_lead(same, same, resamples=200)
    assert all(lead[key] == {"lead": 0.0, "low": 0.0, "high": 0.0} for key in LEAD_KEYS)


def test_a_small_sample_gives_a_wider_interval(scenes_and_estimates):
    """The same scenes five times over: the same leads, known ~sqrt(5) times more precisely."""
    _, s, truth, classical = scenes_and_estimates

    def lead_on(idx):
        return paired_lead(_totals(truth.index(idx), s.index(idx)), _totals(classical.index(idx), s.index(idx)),
                           resamples=1000)

    few, many = lead_on(torch.arange(40)), lead_on(torch.arange(40).repeat(5))
    for key in LEAD_KEYS:
        assert many[key]["lead"] == pytest.approx(few[key]["lead"])
        assert 1.5 * (many[key]["high"] - many[key]["low"]) < few[key]["high"] - few[key]["low"]


def test_totals_of_other_scenes_are_refused(scenes_and_estimates):
    _, s, _, classical = scenes_and_estimates
    with pytest.raises(ValueError, match="same scenes"):
        paired_lead(_totals(classical, s), _totals(classical.index(slice(0, 10)), s.index(slice(0, 10))))


def test_pooled_matches_the_row_when_k_is_estimated(scenes_and_estimates):
    system, s, _, _ = scenes_and_estimates
    counted = localize(r_ls(s.y, s.codes, s.H, s.noise_var, ridge_scale=system.ls_ridge_scale), system, None,
                       order="threshold", threshold=0.5)
    assert (counted.k < s.k).any()  # some counts are too low: those sources go unmatched
    row = estimator_row(system, counted, s)
    pooled = _totals(counted, s).pooled(np.arange(len(s))[None])[0]
    np.testing.assert_allclose(pooled, [row["rmse_phi_deg"], row["rmse_theta_deg"], row["within_1deg"]], rtol=1e-9)

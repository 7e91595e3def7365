import io
import json

import pytest
from rich.console import Console

from ris_model.baseline import render_baseline, run_baseline

METRIC_KEYS = {"rmse_phi_deg", "rmse_theta_deg", "rmse_r_m", "within_1deg", "precision", "recall", "f1", "k_right"}
CRB_KEYS = {"phi_deg_mean", "phi_deg_median", "theta_deg_mean", "theta_deg_median", "r_m_mean", "r_m_median"}


@pytest.fixture(scope="module")
def tiny_result():
    return run_baseline("tiny", 20.0, 10, None, 0)


def test_result_has_the_documented_shape(tiny_result):
    res = json.loads(json.dumps(tiny_result))  # plain JSON types only
    assert set(res) == {"preset", "snr_db", "n", "count", "count_rule", "estimators", "crb", "scenes_per_s", "clock"}
    assert res["clock"] == "cpu"  # CPU time: other load on the machine does not slow the count
    assert (res["preset"], res["snr_db"], res["n"], res["count"]) == ("tiny", 20.0, 10, "oracle")
    assert set(res["scenes_per_s"]) == set(res["estimators"]) and min(res["scenes_per_s"].values()) > 0
    assert list(res["estimators"]) == ["music_true", "music_ls", "music_bp", "music_ml", "mvdr_ls"]
    for metrics in res["estimators"].values():
        assert set(metrics) == METRIC_KEYS
        assert metrics["rmse_r_m"] is None  # far field
    assert set(res["crb"]) == CRB_KEYS
    assert res["crb"]["r_m_mean"] is None and res["crb"]["r_m_median"] is None


def test_ceiling_and_bound_are_sane(tiny_result):
    est, crb = tiny_result["estimators"], tiny_result["crb"]
    assert est["music_true"]["rmse_phi_deg"] < 0.05 and est["music_true"]["rmse_theta_deg"] < 0.05
    assert est["music_true"]["within_1deg"] == 1.0
    assert 0 < crb["phi_deg_median"] < 5 and 0 < crb["theta_deg_median"] < 5
    # no estimator beats the physical limit at this SNR and snapshot count
    assert est["music_ls"]["rmse_phi_deg"] > crb["phi_deg_median"]


def test_near_field_reports_range():
    res = run_baseline("small", 20.0, 3, 1, 0, estimators=("music_true",), crb=False)
    assert res["crb"] is None
    assert res["estimators"]["music_true"]["rmse_r_m"] < 1e-3


def test_unknown_estimator_lists_the_valid_names():
    with pytest.raises(ValueError, match="music_ls"):
        run_baseline("tiny", 20.0, 2, None, 0, estimators=("capon_ls",))


def test_render_shows_every_estimator(tiny_result):
    buf = io.StringIO()
    Console(file=buf, width=120).print(render_baseline(tiny_result))
    text = buf.getvalue()
    for name in tiny_result["estimators"]:
        assert name in text
    assert "CRB" in text


def test_auto_count_estimates_k_per_row_and_scores_detection():
    res = run_baseline("tiny", 20.0, 30, None, 1, count="auto", crb=False)
    assert res["count"] == "auto"
    exact = res["estimators"]["music_true"]
    assert exact["k_right"] == 1.0 and exact["f1"] == 1.0  # a rank-K covariance tells its K
    # with the oracle K every row makes as many estimates as there are sources
    one = run_baseline("tiny", 20.0, 30, 1, 1, count="oracle", crb=False)
    assert all(row["precision"] == row["recall"] for row in one["estimators"].values())
    with pytest.raises(ValueError, match="'oracle' or 'auto'"):
        run_baseline("tiny", 20.0, 2, None, 0, count="guess")


def test_render_of_an_auto_count_shows_detection_columns():
    res = run_baseline("tiny", 20.0, 6, None, 2, count="auto", crb=False)
    buf = io.StringIO()
    Console(file=buf, width=200).print(render_baseline(res))
    text = buf.getvalue()
    assert "K estimated on each row's covariance (MDL)" in text
    assert "F1" in text and "K right" in text and "scenes/CPU s" in text


def test_the_count_rule_comes_from_the_config():
    from ris_model.config import load_config

    cfg = load_config("tiny", overrides=["eval.count_rule=threshold", "eval.count_threshold=0.3"])
    res = run_baseline(cfg, 20.0, 4, None, 3, estimators=("music_true",), count="auto", crb=False)
    assert res["count_rule"] == "eigenvalues above 0.3 × the largest"
    assert run_baseline(cfg, 20.0, 4, None, 3, estimators=("music_true",), crb=False)["count_rule"] is None

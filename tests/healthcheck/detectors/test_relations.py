"""The relation between logged numbers (healthcheck/detectors/relations.py): the total that
was back-propagated against Σ weight × term. The fault fires with its code and place, a
healthy run stays silent, and the variations of a healthy loop (accumulation, bf16
rounding, undeclared weights) stay silent too."""

from __future__ import annotations

import pytest
from det_cases import HEALTHY, fault_tests
from hc_fakes import healthy_step, run

import healthcheck.detectors as D
from healthcheck.events import Severity


def mutated(n, change):
    """n healthy steps, each passed through change(i, record) -> field overrides."""
    return [healthy_step(i, **change(i, healthy_step(i))) for i in range(n)]


# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "LossSumMismatch": (D.LossSumMismatch, mutated(3, lambda i, r: {"loss": r.terms["mse"]}),
                        {("loss.sum_mismatch", "total")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


# -- loss.sum_mismatch ------------------------------------------------------------------
def test_sum_mismatch_silent_on_healthy_run():
    assert run(D.LossSumMismatch(), HEALTHY) == []


def test_sum_mismatch_names_a_sign_flipped_term():
    records = mutated(10, lambda i, r: {"loss": r.terms["mse"] - 0.1 * r.terms["reg"]})
    events = run(D.LossSumMismatch(), records)
    assert events and {e.code for e in events} == {"loss.sum_mismatch"}
    assert events[0].step == 1  # patience 2: the second mismatching step
    assert "'reg'" in events[0].detail and "wrong sign" in events[0].detail
    assert events[0].severity == Severity.ERROR


def test_sum_mismatch_names_a_term_left_out_of_the_sum():
    records = mutated(5, lambda i, r: {"loss": r.terms["mse"]})
    events = run(D.LossSumMismatch(), records)
    assert events and "without 'reg'" in events[0].detail


def test_sum_mismatch_reports_an_undeclared_factor():
    records = mutated(5, lambda i, r: {"loss": 3.0 * r.loss})
    events = run(D.LossSumMismatch(), records)
    assert events and events[0].evidence["ratio"] == pytest.approx(3.0)


def test_sum_mismatch_accepts_the_total_divided_by_accumulation():
    records = mutated(10, lambda i, r: {"loss": r.loss / 4, "step": 4 * i, "batches_seen": 4 * i + 4})
    assert run(D.LossSumMismatch(), records) == []
    wrong = mutated(10, lambda i, r: {"loss": r.loss / 3, "step": 4 * i, "batches_seen": 4 * i + 4})
    assert run(D.LossSumMismatch(), wrong)
    # step counting optimizer steps (TrainingHealth with batches=4): the same
    per_step = mutated(10, lambda i, r: {"loss": r.loss / 4, "step": i, "batches_seen": 4 * i + 4})
    assert run(D.LossSumMismatch(), per_step) == []


def test_sum_mismatch_tolerates_bf16_rounding():
    # three significant digits on the total, as bf16 autocast keeps
    records = mutated(50, lambda i, r: {"loss": float(f"{r.loss:.3g}")})
    assert run(D.LossSumMismatch(), records) == []


def test_sum_mismatch_cannot_judge_undeclared_weights():
    records = mutated(10, lambda i, r: {"loss": 5.0, "weights": {"mse": 1.0}})
    assert run(D.LossSumMismatch(), records) == []
    no_terms = mutated(10, lambda i, r: {"loss": 5.0, "terms": {}, "weights": {}})
    assert run(D.LossSumMismatch(), no_terms) == []


def test_sum_mismatch_rejects_bad_settings():
    with pytest.raises(ValueError, match="rtol"):
        D.LossSumMismatch(rtol=0)



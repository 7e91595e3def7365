"""The baseline rule (healthcheck/detectors/baseline.py): a validation metric that never beats
its declared baseline warns past the warm-up and errors after ``patience`` evaluations; one
that beats it, or a run that declares none, stays silent; the direction is the key's."""

from __future__ import annotations

import pytest
from det_cases import HEALTHY, fault_tests
from hc_fakes import healthy_eval, run

import healthcheck.detectors as D
from healthcheck import judge_records
from healthcheck.events import Severity
from healthcheck.record import StepRecord


def evals(losses, **metrics):
    return [healthy_eval(e, loss=v, metrics=dict(metrics)) for e, v in enumerate(losses)]


FAULTS = {
    "BelowBaseline": (
        D.BelowBaseline,
        evals([0.9] * 10, **{"baseline/loss": 0.8}),
        {("val.below_baseline", "loss")},
    ),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_silent_on_a_model_that_beats_its_baseline_after_a_slow_start():
    # worse than the baseline for the three warm-up evaluations, then better for good
    losses = [1.5, 1.1, 0.85] + [0.7 - 0.01 * e for e in range(12)]
    assert run(D.BelowBaseline(), evals(losses, **{"baseline/loss": 0.8})) == []
    assert any(isinstance(d, D.BelowBaseline) for d in D.default_detectors())


def test_warns_past_warmup_then_errors_after_patience():
    events = run(D.BelowBaseline(warmup=3, patience=5), evals([0.9] * 10, **{"baseline/loss": 0.8}))
    assert [e.step for e in events] == [healthy_eval(e).step for e in range(3, 10)]
    assert [e.severity for e in events] == [Severity.WARNING] * 4 + [Severity.ERROR] * 3
    assert events[0].evidence == {"value": 0.9, "baseline": 0.8, "evals": 1.0}


def test_a_tie_is_not_a_gain_and_a_win_resets_the_streak():
    det = D.BelowBaseline(warmup=0, patience=2)
    assert [e.severity for e in run(det, evals([0.8, 0.8], **{"baseline/loss": 0.8}))] == [
        Severity.WARNING, Severity.ERROR]
    mixed = evals([0.9, 0.7, 0.9, 0.7, 0.9], **{"baseline/loss": 0.8})
    assert {e.severity for e in run(det, mixed)} == {Severity.WARNING}


def test_higher_is_better_baselines_compare_the_other_way():
    det = D.BelowBaseline(warmup=0)
    below = [healthy_eval(e, metrics={"acc": 0.4, "baseline_max/acc": 0.5}) for e in range(2)]
    above = [healthy_eval(e, metrics={"acc": 0.6, "baseline_max/acc": 0.5}) for e in range(2)]
    assert {e.where for e in run(det, below)} == {"acc"}
    assert run(det, above) == []
    # the same numbers with a lower-is-better key flip the verdict
    assert run(det, [healthy_eval(0, metrics={"acc": 0.6, "baseline/acc": 0.5})])


def test_each_metric_is_judged_on_its_own_and_terms_count():
    det = D.BelowBaseline(warmup=0)
    recs = [healthy_eval(e, loss=0.5, terms={"cov": 0.3},
                         metrics={"baseline/loss": 0.6, "baseline/cov": 0.2}) for e in range(3)]
    assert {e.where for e in run(det, recs)} == {"cov"}


def test_silent_when_the_metric_or_the_baseline_is_not_a_number():
    det = D.BelowBaseline(warmup=0)
    assert run(det, evals([float("nan")] * 3, **{"baseline/loss": 0.8})) == []
    assert run(det, evals([0.9] * 3, **{"baseline/loss": float("inf")})) == []
    assert run(det, evals([0.9] * 3, **{"baseline/missing": 0.1})) == []
    assert run(det, HEALTHY) == []


def test_settings_are_checked():
    with pytest.raises(ValueError, match="patience=0"):
        D.BelowBaseline(patience=0)
    with pytest.raises(ValueError, match="warmup=-1"):
        D.BelowBaseline(warmup=-1)


def test_baseline_metrics_names_the_direction_and_refuses_a_stray_name():
    assert D.baseline_metrics({"loss": 0.9, "acc": 0.5}, {"acc"}) == {
        "baseline/loss": 0.9, "baseline_max/acc": 0.5}
    assert D.baseline_metrics(None) == {}
    with pytest.raises(ValueError, match="acc"):
        D.baseline_metrics({"loss": 0.9}, {"acc"})


def test_judged_the_same_from_a_metrics_file(tmp_path):
    from healthcheck.record import MetricsWriter, read_records

    with MetricsWriter(tmp_path / "metrics.jsonl") as out:
        for rec in evals([0.9] * 9, **{"baseline/loss": 0.8}):
            out.write(rec)
    back = read_records(tmp_path / "metrics.jsonl")
    assert all(isinstance(r, StepRecord) and r.metrics["baseline/loss"] == 0.8 for r in back)
    found = [e for e in judge_records(back) if e.code == "val.below_baseline"]
    # the monitor folds the repeats into one event, raised to the worst tier seen
    assert [(e.where, e.severity, e.count) for e in found] == [("loss", Severity.ERROR, 6)]

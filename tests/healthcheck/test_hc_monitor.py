from __future__ import annotations

import math

import pytest
from hc_fakes import healthy_eval, healthy_step

import healthcheck.detectors as D
from healthcheck.events import HealthEvent, Severity, read_events
from healthcheck.monitor import Monitor, judge_records
from healthcheck.policy import Policy
from healthcheck.record import MetricsWriter
from healthcheck.sinks import JsonlSink


class ListSink:
    def __init__(self):
        self.got: list[tuple[HealthEvent, str]] = []
        self.closed = False

    def emit(self, event, action):
        self.got.append((event, action))

    def close(self):
        self.closed = True


def feed(monitor, records):
    out = []
    for r in records:
        out.extend(monitor.observe_record(r))
    return out


def test_repeats_are_folded_and_counted_at_close():
    sink = ListSink()
    m = Monitor([D.ZeroLR()], sinks=[sink])
    emitted = feed(m, [healthy_step(i, lr=[0.0, 1e-3]) for i in range(10)])
    assert len(emitted) == 1 and emitted[0].count == 1 and emitted[0].where == "group0"
    assert m.summary()["by_code"] == {"lr.zero": 9}  # fires from the 2nd zero step on
    m.close()
    codes = [(e.code, e.count) for e, _ in sink.got]
    assert codes == [("lr.zero", 1), ("lr.zero", 9), ("monitor.summary", 1)]
    assert sink.closed
    (finding,) = m.findings()
    assert finding.count == 9


def test_severity_increase_is_emitted_again():
    m = Monitor([D.SkippedSteps()])
    recs = [healthy_step(i, steps_taken=1 + i // 3) for i in range(25)]  # partial: warning
    recs += [healthy_step(i, steps_taken=9) for i in range(25, 60)]  # none applied: error
    emitted = feed(m, recs)
    assert [e.severity for e in emitted] == [Severity.WARNING, Severity.ERROR]
    assert emitted[1].count > 1


def test_distinct_places_are_distinct_findings():
    m = Monitor([D.ZeroLR()])
    emitted = feed(m, [healthy_step(i, lr=[0.0, 0.0]) for i in range(5)])
    assert sorted(e.where for e in emitted) == ["group0", "group1"]


def test_weight_changes_are_never_folded():
    m = Monitor([D.WeightChanged()])
    recs = [healthy_step(i, weights={"mse": 1.0, "reg": 0.1 * (i + 1)}) for i in range(5)]
    emitted = feed(m, recs)
    assert len(emitted) == 4 and all(e.count == 1 for e in emitted)


def test_critical_stops_and_names_the_reason():
    m = Monitor()
    out = m.observe(healthy_step(0, weights={"mse": 0.0, "reg": 0.1}), "after_backward")
    assert m.should_stop and not m.should_prune
    assert m.stop_reason.code == "weights.primary_zero" and m.stop_reason in out
    assert "weights.primary_zero" in m.stop_message and "'mse'" in m.stop_message


def test_error_stops_in_hpo_but_only_warns_in_train():
    recs = [healthy_step(i, lr=[0.0, 1e-3]) for i in range(3)]
    train = Monitor([D.ZeroLR()], context="train")
    feed(train, recs)
    hpo = Monitor([D.ZeroLR()], context="hpo")
    feed(hpo, recs)
    assert not train.should_stop and hpo.should_stop


def test_prune_action_in_hpo():
    m = Monitor([D.ZeroLR()], policy=Policy({"lr.zero": "prune"}), context="hpo")
    feed(m, [healthy_step(i, lr=[0.0, 1e-3]) for i in range(3)])
    assert m.should_prune and m.should_stop and m.prune_reason.code == "lr.zero"


def test_silenced_codes_are_counted_but_not_sent():
    sink = ListSink()
    m = Monitor([D.ZeroLR()], policy=Policy(silence=["lr.zero"]), sinks=[sink])
    feed(m, [healthy_step(i, lr=[0.0, 1e-3]) for i in range(4)])
    assert sink.got == [] and m.summary()["silenced"] == {"lr.zero": 3}


def test_every_runs_detectors_on_every_nth_step():
    calls = []

    class Spy(D.Detector):
        codes = ("lr.zero",)
        phases = frozenset({"after_backward"})

        def check(self, record, state, live):
            calls.append(record.step)
            return ()

    m = Monitor([Spy(), D.ZeroLR()], every={"Spy": 5})
    feed(m, [healthy_step(i) for i in range(12)])
    assert calls == [0, 5, 10]
    with pytest.raises(ValueError, match="'Spi'.*did you mean 'Spy'"):
        Monitor([Spy()], every={"Spi": 2})
    with pytest.raises(ValueError, match="every\\['\\*'\\]=0"):
        Monitor([Spy()], every=0)


def test_live_detectors_are_skipped_without_live_view():
    m = Monitor([D.NoneGrad(), D.NotInOptimizer()])
    assert feed(m, [healthy_step(i) for i in range(5)]) == []


def test_a_failing_detector_is_reported_and_switched_off():
    class Broken(D.Detector):
        codes = ("lr.zero",)
        phases = frozenset({"after_backward"})

        def check(self, record, state, live):
            raise KeyError("boom")

    m = Monitor([Broken(), D.ZeroLR()])
    emitted = feed(m, [healthy_step(i, lr=[0.0, 1e-3]) for i in range(3)])
    codes = [e.code for e in emitted]
    assert codes.count("monitor.detector_failed") == 1 and "lr.zero" in codes
    assert "boom" in emitted[0].detail and emitted[0].where == "Broken"


def test_a_failing_sink_does_not_reach_the_loop():
    class BadSink(ListSink):
        def emit(self, event, action):
            raise OSError("disk full")

    good = ListSink()
    m = Monitor([D.ZeroLR()], sinks=[BadSink(), good])
    with pytest.warns(RuntimeWarning, match="disk full"):
        feed(m, [healthy_step(i, lr=[0.0, 1e-3]) for i in range(3)])
    assert good.got


def test_healthy_run_emits_nothing_and_summary_is_clean():
    m = Monitor()
    assert feed(m, [healthy_step(i) for i in range(200)] + [healthy_eval(e) for e in range(8)]) == []
    s = m.close()
    assert s["events"] == 0 and not s["stopped"]
    with pytest.raises(RuntimeError, match="after close"):
        m.observe(healthy_step(0), "after_step")


def test_bad_phase_and_context():
    with pytest.raises(ValueError, match="phase='before_step'"):
        Monitor().observe(healthy_step(0), "before_step")
    with pytest.raises(ValueError, match="context='prod'"):
        Monitor(context="prod")


def test_judge_records_from_a_metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        for i in range(30):
            w.write(healthy_step(i, lr=[0.0, 1e-3], update_norm={"encoder": 1e-3, "head": 0.0}))
        for e in range(4):
            w.write(healthy_eval(e, loss=0.5))
    from healthcheck.record import read_records
    findings = judge_records(read_records(path))
    got = {(e.code, e.where): e for e in findings}
    assert {("lr.zero", "group0"), ("param.frozen", "head"), ("val.constant", "val")} <= set(got)
    assert got[("lr.zero", "group0")].count == 29 and got[("lr.zero", "group0")].source == "watch"
    # dicts straight from the file work too
    assert {(e.code, e.where) for e in judge_records(r.to_metrics_line() for r in read_records(path))} == set(got)


def test_jsonl_sink_keeps_everything_including_records(tmp_path):
    m = Monitor([D.WeightChanged(), D.ZeroLR()], sinks=[JsonlSink(tmp_path)])
    feed(m, [healthy_step(0), healthy_step(1, weights={"mse": 1.0, "reg": 0.5})]
         + [healthy_step(i, lr=[0.0, 1e-3], weights={"mse": 1.0, "reg": 0.5}) for i in range(2, 6)])
    m.close()
    events = read_events(tmp_path / "health.jsonl")
    assert [e.code for e in events] == ["weights.changed", "lr.zero", "lr.zero", "monitor.summary"]
    assert events[2].count == 3 and events[-1].evidence["error"] == 3 and events[-1].evidence["info"] == 1
    assert not math.isnan(events[0].time)


def test_default_policy_reads_the_environment(monkeypatch):
    monkeypatch.setenv("HEALTHCHECK_SILENCE", "lr.zero")
    m = Monitor([D.ZeroLR()])
    assert feed(m, [healthy_step(i, lr=[0.0, 1e-3]) for i in range(4)]) == []
    monkeypatch.setenv("HEALTHCHECK_SILENCE", "")
    monkeypatch.setenv("HEALTHCHECK_REGRADE", "lr.zero=critical")
    m = Monitor([D.ZeroLR()])
    feed(m, [healthy_step(i, lr=[0.0, 1e-3]) for i in range(4)])
    assert m.should_stop and m.stop_reason.severity is Severity.CRITICAL


def test_detectors_added_later_judge_from_the_next_record_on():
    sink = ListSink()
    m = Monitor([D.ZeroLR()], sinks=[sink])
    feed(m, [healthy_step(0, loss=1e25)])  # no range declared yet: nothing to say
    m.add_detectors([D.ExpectedRange("loss", 0.0, 10.0)])
    events = feed(m, [healthy_step(1, loss=1e25), healthy_step(2)])
    assert [(e.code, e.step) for e in events] == [("value.out_of_range", 1)]
    assert [type(d).__name__ for d in m.detectors] == ["ZeroLR", "ExpectedRange"]
    with pytest.raises(TypeError, match="Detector instances"):
        m.add_detectors([object()])

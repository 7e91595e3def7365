"""`healthcheck watch`: verdicts, exit statuses, merging with health.jsonl, --follow."""

from __future__ import annotations

import json
import threading
import time

import pytest
from _runfiles import append, dumps, health_event, step_line, write_health, write_run
from click.testing import CliRunner

from healthcheck.cli import cli
from healthcheck.events import HealthEvent
from healthcheck.watch import EventBook, RunWatch, WatchOptions, run_watch


def invoke(*args, env=None):
    return CliRunner().invoke(cli, ["watch", *map(str, args)], env=env)


def verdict_of(*args, env=None):
    res = invoke(*args, "--json", env=env)
    return res, json.loads(res.stdout)


def test_healthy_run_exits_0(run_factory):
    res, v = verdict_of(run_factory())
    assert res.exit_code == 0, res.output
    assert v["healthy"] is True and v["worst_severity"] in (None, "info", "warning")
    assert v["last"]["step"] == 119


@pytest.mark.parametrize("fault, code", [
    ("nan", "loss.nonfinite"), ("zero", "loss.zero"), ("zero", "weights.primary_zero"),
    ("constant", "loss.constant")])
def test_faulty_runs_are_flagged(run_factory, fault, code):
    res, v = verdict_of(run_factory(fault=fault), "--fail-on", "warning")
    assert code in {e["code"] for e in v["events"]}
    assert res.exit_code == 1 and v["healthy"] is False


def test_nan_is_flagged_at_the_first_bad_step_and_named(run_factory):
    _, v = verdict_of(run_factory(fault="nan"))
    nonfinite = [e for e in v["events"] if e["code"] == "loss.nonfinite" and e["where"] == "cov"]
    assert len(nonfinite) == 1  # repeats are folded, not listed per step
    e = nonfinite[0]
    assert e["step"] == 30 and e["severity"] == "critical" and e["source"] == "watch"
    assert e["count"] == 120 - 30 and e["last_step"] == 119
    assert v["last"]["loss"] == "NaN"  # strict JSON: non-finite numbers become strings


def test_once_json_shape(run_factory):
    _, v = verdict_of(run_factory(fault="zero"))
    assert {"run_dir", "healthy", "worst_severity", "events", "last"} <= set(v)
    assert v["worst_severity"] == "critical"
    for e in v["events"]:
        assert {"code", "severity", "step", "where", "title", "hint", "evidence", "count"} <= set(e)
    last = v["last"]
    assert last["loss"] == 0.0 and last["weights"]["cov"] == 0.0 and last["lr"] == [1e-3]
    assert last["grad_norm"]["trunk"] == 0.8


def test_fail_on_levels(run_factory):
    run = run_factory(fault="constant")  # warnings (constant loss) and an error (val.constant)
    _, v = verdict_of(run)
    worst = v["worst_severity"]
    order = ["warning", "error", "critical"]
    for level in order:
        expected = 1 if order.index(worst) >= order.index(level) else 0
        assert invoke(run, "--fail-on", level).exit_code == expected, level


def test_env_var_prefix_sets_options(run_factory):
    run = run_factory(fault="constant")
    assert invoke(run, "--fail-on", "critical").exit_code == 0
    assert invoke(run, env={"HEALTHCHECK_WATCH_FAIL_ON": "warning"}).exit_code == 1


def test_silence_and_regrade_by_code(run_factory):
    run = run_factory(fault="nan")
    env = {"HEALTHCHECK_SILENCE": "loss.nonfinite"}
    res, v = verdict_of(run, env=env)
    assert "loss.nonfinite" not in {e["code"] for e in v["events"]}
    _, v = verdict_of(run, env={"HEALTHCHECK_REGRADE": "loss.nonfinite=warning"})
    assert {e["severity"] for e in v["events"] if e["code"] == "loss.nonfinite"} == {"warning"}


def test_empty_run_is_judged_not_refused(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "config.json").write_text("{}")
    res, v = verdict_of(run)  # a verdict (no step: unhealthy), not a usage error
    assert res.exit_code == 1 and [e["code"] for e in v["events"]] == ["watch.no_steps"]
    assert v["last"]["step"] is None
    (run / "metrics.jsonl").write_text("")
    assert invoke(run).exit_code == 1


@pytest.mark.parametrize("args, needle", [
    (["/no/such/run"], "does not exist"),
    (["{run}", "--format", "csv"], "no metrics.csv"),
    (["{run}", "--format", "xml"], "'xml' is not one of"),
    (["{other}"], "holds no metrics.jsonl"),
])
def test_usage_errors_exit_2_with_one_sentence(run_factory, tmp_path, args, needle):
    run = run_factory()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    res = invoke(*[a.format(run=run, other=other) for a in args])
    assert res.exit_code == 2
    assert needle in res.output and "Traceback" not in res.output


def test_garbage_and_torn_lines_are_reported_once(run_factory):
    run = run_factory(n=60)
    append(run / "metrics.jsonl", "garbage here\n" + dumps(step_line(60)) + "\n[1]\n" + '{"step": 61, "lo')
    res, v = verdict_of(run, "--fail-on", "warning")
    bad = [e for e in v["events"] if e["code"] == "watch.bad_line"]
    # 60 steps + 1 eval line come before the first garbage line
    assert [(e["evidence"]["line"], e["where"]) for e in bad] == [
        (62, "metrics.jsonl:62"), (64, "metrics.jsonl:64")]
    assert v["last"]["step"] == 60 and v["reader"]["torn_bytes"] > 0
    assert res.exit_code == 1  # a warning, and --fail-on warning


def test_health_jsonl_events_merge_and_deduplicate(run_factory):
    run = run_factory(fault="nan")
    write_health(run, [
        health_event("loss.nonfinite", "critical", 30, "cov", title="from the monitor"),
        health_event("grad.none", "error", 3, "head.0", title="only the monitor sees this"),
    ])
    _, v = verdict_of(run)
    keyed = [(e["code"], e["where"], e["step"]) for e in v["events"]]
    assert keyed.count(("loss.nonfinite", "cov", 30)) == 1
    kept = next(e for e in v["events"] if e["code"] == "loss.nonfinite" and e["where"] == "cov")
    assert kept["source"] == "monitor" and kept["title"] == "from the monitor"
    assert ("grad.none", "head.0", 3) in keyed


def test_event_book_folds_one_finding_per_place_and_counts_it_once():
    book = EventBook()

    def ev(step, where, source="watch", count=1, severity="warning"):
        return HealthEvent(code="loss.dead_term", severity=severity, step=step, where=where,
                           source=source, count=count)

    assert book.add(ev(5, "a")) is not None
    assert book.add(ev(6, "a", count=2)) is None  # a repeat: counts are cumulative per source
    assert book.add(ev(6, "b")) is not None  # another place is another finding
    # the monitor saw the same finding in-process: first occurrence, then its closing tally
    assert book.add(ev(5, "a", "monitor")) is None
    assert book.add(ev(9, "a", "monitor", count=5)) is None
    rose = book.add(ev(10, "a", "watch", count=6, severity="error"))
    assert rose is not None and str(rose.severity) == "error"  # a higher severity is news
    (a, b) = book.dicts()
    assert (a["where"], a["step"], a["last_step"], a["count"], a["severity"]) == ("a", 5, 10, 6, "error")
    assert (b["where"], b["step"], b["count"]) == ("b", 6, 1)


def test_monitor_and_watch_copies_of_a_finding_become_one(run_factory):
    run = run_factory(fault="zero", n=50, evals=False)
    write_health(run, [
        health_event("weights.primary_zero", "critical", 0, "cov", title="monitor: weight 0"),
        health_event("weights.primary_zero", "critical", 49, "cov", title="monitor: weight 0",
                     count=50),
    ])
    _, v = verdict_of(run)
    found = [e for e in v["events"] if e["code"] == "weights.primary_zero"]
    assert len(found) == 1
    assert (found[0]["step"], found[0]["last_step"], found[0]["count"]) == (0, 49, 50)
    assert found[0]["title"] == "monitor: weight 0"


def test_follow_waits_for_a_missing_dir_up_to_the_timeout(tmp_path):
    start = time.monotonic()
    res = invoke(tmp_path / "never", "--follow", "--timeout", "0.3", "--interval", "0.05")
    assert res.exit_code == 2 and "did not appear" in res.output
    assert time.monotonic() - start < 5


def test_follow_reads_a_run_that_starts_later_and_stops_at_its_summary(tmp_path):
    run = tmp_path / "later"

    def trainer():
        time.sleep(0.2)
        run.mkdir()
        with open(run / "metrics.jsonl", "w") as fh:
            for i in range(40):
                line = step_line(i, "nan" if i >= 35 else None)
                fh.write(dumps(line) + "\n")
                fh.flush()
                time.sleep(0.005)
        write_health(run, [health_event("monitor.summary", "info", 39)])

    t = threading.Thread(target=trainer)
    t.start()
    res = invoke(run, "--follow", "--timeout", "10", "--interval", "0.05", "--json")
    t.join()
    v = json.loads(res.stdout)  # the "waiting for …" note goes to stderr
    assert res.exit_code == 1
    assert v["reader"]["ended"] is True and v["last"]["step"] == 39
    assert ("loss.nonfinite", 35) in {(e["code"], e["step"]) for e in v["events"]}


def test_follow_plain_lines_when_not_a_tty(tmp_path):
    run = write_run(tmp_path / "r", 50, "zero")
    write_health(run, [health_event("monitor.summary", "info", 49)])
    res = invoke(run, "--follow", "--interval", "0.05", "--timeout", "5")
    assert "\x1b[" not in res.output  # no terminal control codes in a log
    lines = res.output.splitlines()
    assert any(l.startswith("CRITICAL weights.primary_zero") for l in lines)
    assert lines[-1].startswith("UNHEALTHY")


def test_follow_lag_from_write_to_judgement(tmp_path):
    """A line appended to a followed run is judged within one poll interval."""
    run = write_run(tmp_path / "r", 10)
    watch = RunWatch(run)
    watch.poll_all()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(dumps(step_line(10, "zero")) + "\n")
    written = time.monotonic()
    while not any(e.code == "weights.primary_zero" for e in watch.new_events):
        watch.poll()
        assert time.monotonic() - written < 1.0
        time.sleep(0.01)


def test_run_watch_prints_a_panel_on_a_terminal(run_factory):
    import io

    out = io.StringIO()
    code = run_watch(str(run_factory(fault="zero")), WatchOptions(), out=out, is_tty=True)
    text = out.getvalue()
    assert code == 1
    assert "weights.primary_zero" in text and "step" in text and "share" in text


@pytest.mark.parametrize("bad", ['"weight_sources": [1]', '"step": 1e400'])
def test_a_malformed_field_is_a_bad_line_not_a_crash(tmp_path, bad):
    from _runfiles import step_line

    lines = [json.dumps(step_line(i)) for i in range(3)]
    good = json.dumps(step_line(3))
    lines.append(good[:-1] + ", " + bad + "}")
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    res, v = verdict_of(tmp_path, "--fail-on", "critical")
    assert res.exit_code == 0, res.output
    assert any(e["code"] == "watch.bad_line" for e in v["events"])

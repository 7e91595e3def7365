"""A verdict needs evidence: a run without a step is not healthy, and a run whose monitor
never closed is reported as ended early, with how its last line ended."""

from __future__ import annotations

import io
import json

import pytest
from _runfiles import append, health_event, write_health, write_run
from click.testing import CliRunner

from healthcheck.cli import cli
from healthcheck.watch import WatchOptions, run_watch

EVAL_LINE = {"schema": 1, "kind": "eval", "step": 0, "epoch": 0, "time": 1.7e9, "rank": 0,
             "loss": 1.0, "terms": {}, "metrics": {}}


def verdict(run, *args):
    res = CliRunner().invoke(cli, ["watch", str(run), "--json", *map(str, args)])
    return res.exit_code, json.loads(res.stdout)


def codes(v):
    return {e["code"]: e for e in v["events"]}


@pytest.mark.parametrize("files", [
    {"config.json": "{}"},  # nothing logged at all
    {"metrics.jsonl": ""},  # an empty metrics file
    {"health.jsonl": ""},  # an empty health log, no metrics
    {"metrics.jsonl": json.dumps(EVAL_LINE) + "\n"},  # one eval line, no step line
])
def test_a_run_without_a_step_is_unhealthy(tmp_path, files):
    run = tmp_path / "run"
    run.mkdir()
    for name, text in files.items():
        (run / name).write_text(text)
    status, v = verdict(run)
    assert status == 1 and v["healthy"] is False
    e = codes(v)["watch.no_steps"]
    assert e["severity"] == "error" and e["source"] == "watch"
    assert v["reader"]["steps"] == 0


def test_the_run_that_died_at_its_first_backward(tmp_path):
    # what a loop leaves when its process dies at the first backward: one eval line, an
    # empty health log (the monitor opened it), no closing summary
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(EVAL_LINE) + "\n")
    (run / "health.jsonl").write_text("")
    status, v = verdict(run)
    assert status == 1
    assert {"watch.no_steps", "watch.ended_early"} <= set(codes(v))
    assert v["reader"]["ended_early"] is True and v["reader"]["last_line"] == "clean stop"


def test_a_healthy_closed_run_is_not_ended_early(run_factory):
    run = run_factory()
    write_health(run, [health_event("monitor.summary", "info", 119)])
    status, v = verdict(run, "--fail-on", "warning")
    assert status == 0 and v["healthy"]
    assert v["reader"]["ended"] is True and v["reader"]["ended_early"] is False
    assert v["reader"]["last_line"] is None and v["reader"]["steps"] == 120


def test_a_run_logged_without_a_monitor_has_no_summary_to_miss(run_factory):
    status, v = verdict(run_factory(), "--fail-on", "warning")
    assert status == 0 and "watch.ended_early" not in codes(v)
    assert v["reader"]["ended_early"] is False


@pytest.mark.parametrize("tail, health, how", [
    ("", [], "clean stop"),  # the last line is complete
    ('{"schema": 1, "kind": "step", "step": 120, "lo', [], "crash"),  # torn mid-write
    ("", [health_event("run.crashed", "error", 119, title="RuntimeError: boom")], "crash"),
])
def test_ended_early_says_how_the_last_line_ended(run_factory, tail, health, how):
    run = run_factory()
    (run / "health.jsonl").write_text("")
    write_health(run, health)
    append(run / "metrics.jsonl", tail)
    status, v = verdict(run, "--fail-on", "critical")
    e = codes(v)["watch.ended_early"]
    assert e["severity"] == "warning" and e["step"] == 119 and how in e["title"]
    assert v["reader"]["ended_early"] is True and v["reader"]["last_line"] == how
    assert status == 0  # a warning: --fail-on decides


def test_fail_on_decides_whether_ending_early_fails(run_factory):
    run = run_factory()
    (run / "health.jsonl").write_text("")
    assert verdict(run)[0] == 0  # default --fail-on error
    assert verdict(run, "--fail-on", "warning")[0] == 1


def test_ending_early_can_be_silenced_like_any_code(run_factory):
    run = run_factory()
    (run / "health.jsonl").write_text("")
    res = CliRunner().invoke(cli, ["watch", str(run), "--json", "--fail-on", "warning"],
                             env={"HEALTHCHECK_SILENCE": "watch.ended_early"})
    assert res.exit_code == 0 and "watch.ended_early" not in res.stdout


def test_follow_concludes_when_the_run_goes_quiet(tmp_path):
    run = write_run(tmp_path / "run", 30)
    (run / "health.jsonl").write_text("")
    out, err = io.StringIO(), io.StringIO()
    status = run_watch(str(run), WatchOptions(follow=True, as_json=True, interval=0.01, timeout=0.2),
                       out=out, err=err, is_tty=False)
    v = json.loads(out.getvalue())
    assert status == 0 and v["reader"]["ended_early"] is True
    assert "watch.ended_early" in codes(v)

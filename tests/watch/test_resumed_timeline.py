"""`watch` and `report` read a resumed run as one run that never stopped (docs/run-dir.md):
the lines a `resume` marker supersedes are read and counted, never judged or shown."""

from __future__ import annotations

import json

import pytest
from _runfiles import step_line
from click.testing import CliRunner

from healthcheck.cli import cli
from healthcheck.monitor import judge_records
from healthcheck.record import read_records
from healthcheck.watch.reading.resume import superseded_lines


def resume_line(step):
    return {"kind": "resume", "step": step, "epoch": 0, "batch_in_epoch": step, "steps_taken": step,
            "checkpoint": "checkpoints/last.pt"}


def write(run, lines):
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def killed_then_resumed(tmp_path, *, lost="zero"):
    """Steps 0-24 of a run killed after step 24 whose last checkpoint was at step 20, then
    the resumed run from step 20 to 29: steps 20-24 appear twice, first as ``lost`` logged."""
    first = [step_line(i, lost if i >= 20 else None) for i in range(25)]
    return write(tmp_path / "run", [*first, resume_line(20), *(step_line(i) for i in range(20, 30))])


def watch_json(run):
    res = CliRunner().invoke(cli, ["watch", str(run), "--once", "--json"])
    return res, json.loads(res.stdout)


def test_the_superseded_lines_are_those_before_the_marker_at_its_step_or_later(tmp_path):
    run = killed_then_resumed(tmp_path)
    assert superseded_lines(run / "metrics.jsonl") == frozenset({21, 22, 23, 24, 25, 26})  # 20-24 and the marker


def test_a_file_without_a_marker_supersedes_nothing(tmp_path):
    run = write(tmp_path / "run", [step_line(i) for i in range(10)])
    assert superseded_lines(run / "metrics.jsonl") == frozenset()


def test_watch_judges_the_resumed_timeline_only(tmp_path):
    run = killed_then_resumed(tmp_path)  # the killed run lost its primary weight at the end; the redone steps did not
    res, v = watch_json(run)
    assert res.exit_code == 0, res.output
    assert v["healthy"] and v["reader"]["steps"] == 30 and v["reader"]["superseded"] == 6
    assert v["reader"]["lines"] == 36  # every line was read
    # the same verdict as judging the records read through the rule
    offline = {e.code for e in judge_records(read_records(run / "metrics.jsonl"))}
    assert "weights.primary_zero" not in offline


def test_a_fault_in_the_resumed_part_still_fires(tmp_path):
    first = [step_line(i) for i in range(25)]
    run = write(tmp_path / "run", [*first, resume_line(20), *(step_line(i, "zero") for i in range(20, 30))])
    res, v = watch_json(run)
    assert res.exit_code == 1
    assert "weights.primary_zero" in {e["code"] for e in v["events"]}


def test_report_reads_the_same_timeline(tmp_path):
    run = killed_then_resumed(tmp_path)
    res = CliRunner().invoke(cli, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "weights.primary_zero" not in (run / "report.html").read_text()


def _follow(tmp_path, first, then, *, typed=True):
    """A RunWatch that read ``first``, then the same file after ``then`` was appended."""
    from healthcheck.watch.runwatch import RunWatch

    run = write(tmp_path / "run", first)
    watch = RunWatch(run, typed=typed)
    watch.poll()
    judged_first = [(e.code, e.step) for e in watch.new_events]
    watch.new_events.clear()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write("".join(json.dumps(line) + "\n" for line in then))
    watch.poll()
    return watch, judged_first


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "dicts"])
def test_a_run_resumed_while_followed_is_one_timeline(tmp_path, typed):
    """The marker and the steps the resumed run logs again are read and counted, not judged."""
    first = [step_line(i) for i in range(25)]
    watch, _ = _follow(tmp_path, first, [resume_line(20), *(step_line(i) for i in range(20, 30))], typed=typed)
    assert watch.steps == 30 and watch.superseded == 6
    assert watch.new_events == []
    assert watch.state.last_step["step"] == 29


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "dicts"])
def test_a_fault_after_the_replayed_steps_still_fires_while_followed(tmp_path, typed):
    first = [step_line(i) for i in range(25)]
    then = [resume_line(20), *(step_line(i) for i in range(20, 25)), *(step_line(i, "zero") for i in range(25, 30))]
    watch, _ = _follow(tmp_path, first, then, typed=typed)
    assert ("weights.primary_zero", 25) in {(e.code, e.step) for e in watch.new_events}


def test_a_second_marker_while_followed_replays_from_its_own_step(tmp_path):
    first = [step_line(i) for i in range(25)]
    then = [resume_line(20), *(step_line(i) for i in range(20, 28)), resume_line(26),
            *(step_line(i) for i in range(26, 32))]
    watch, _ = _follow(tmp_path, first, then)
    assert watch.steps == 32 and watch.superseded == 2 + 5 + 2
    assert watch.new_events == []


def test_a_deeply_nested_line_after_the_layout_was_learned_does_not_stop_the_watcher(tmp_path):
    """Typed decoding of a read with a hostile nesting depth falls back to line-by-line reading."""
    nested = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    first = [step_line(i) for i in range(5)]
    from healthcheck.watch.runwatch import RunWatch

    run = write(tmp_path / "run", first)
    watch = RunWatch(run)
    watch.poll()
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(step_line(5)) + "\n" + nested + "\n" + json.dumps(step_line(6)) + "\n")
    watch.poll()
    assert watch.steps == 7

"""Run dirs with bad data or odd files: a verdict, or one sentence and exit 2; never a
traceback, never a hang, and never a crash that reads as "unhealthy"."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from _runfiles import step_line, write_run
from click.testing import CliRunner

from healthcheck.cli import INTERNAL_ERROR, cli
from healthcheck.watch.reading import BadLine, JsonLinesTail, LineTail
from healthcheck.watch.reading.tensorboard import masked_crc32c

ESC = "\x1b]0;pwned\x07\x1b[2J"  # retitle the terminal, clear the screen


def run_cli(*args):
    res = CliRunner().invoke(cli, [*map(str, args)])
    assert "Traceback" not in res.output + res.stderr
    return res


def watch_json(run, *args):
    res = run_cli("watch", run, "--json", *args)
    return res, json.loads(res.stdout)


def write_lines(run: Path, lines) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.jsonl", "w") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return run


def steps(n, **over):
    return [{**step_line(i), **over} for i in range(n)]


def codes(v):
    return [e["code"] for e in v["events"]]


# ------------------------------------------------------------ bad data: bad lines, not crashes
@pytest.mark.parametrize("name", ['a"b', "a\\b", "a\x07b", "$x_$", "[bold red]x[/]"])
def test_any_term_name_is_read_and_judged(tmp_path, name):
    # the typed decoder cannot name a field with a quote, a backslash or a control
    # character: those lines are read as dicts, and judged like any other
    lines = steps(40)
    for line in lines:
        line["terms"][name] = 0.5
        line["weights"][name] = 0.1
        line["loss"] += 0.05
    run = write_lines(tmp_path / "run", lines)
    res, v = watch_json(run)
    assert res.exit_code == 0, res.output
    assert name in v["last"]["terms"] and v["reader"]["bad_lines"] == 0
    assert run_cli("report", run).exit_code == 0


def test_a_deeply_nested_line_is_a_bad_line(tmp_path):
    run = write_lines(tmp_path / "run", [*steps(5), '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", *steps(3)])
    res, v = watch_json(run, "--fail-on", "critical")
    assert res.exit_code == 0
    bad = [e for e in v["events"] if e["code"] == "watch.bad_line"]
    assert [e["evidence"]["line"] for e in bad] == [6]


@pytest.mark.parametrize("field, value", [
    ("terms", [1, 2]), ("weights", [1.0]), ("grad_norm", [1.0]), ("lr", 0.1),
    ("update_norm", "x"), ("step", "x"), ("step", float("nan")), ("step", 10 ** 400),
    ("loss", "1.0"), ("terms", {"a": "x"}), ("epoch", [1])])
def test_wrong_typed_fields_get_one_reading_in_watch_and_report(tmp_path, field, value):
    lines = steps(30)
    lines[20] = {**lines[20], field: value}
    run = write_lines(tmp_path / "run", lines)
    res, v = watch_json(run, "--fail-on", "critical")
    assert res.exit_code == 0, res.output
    rep = run_cli("report", run)
    assert rep.exit_code == 0, rep.output
    html = (run / "report.html").read_text()
    assert "watch.no_steps" not in html  # the same rows as watch: there are steps


def test_an_empty_object_line_and_odd_steps_do_not_break_the_report(tmp_path):
    run = write_lines(tmp_path / "run", [*steps(10), "{}", '{"kind": "step", "step": NaN, "loss": 1.0}',
                                         '{"kind": "eval", "step": 1e400, "loss": 1.0}',
                                         '{"kind": "step", "step": "7", "loss": 1.0}', *steps(3)])
    assert run_cli("watch", run, "--fail-on", "critical").exit_code == 0
    assert run_cli("report", run).exit_code == 0


def test_binary_lightning_csv_is_bad_lines_not_a_crash(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_bytes(bytes(range(256)) * 12)
    res, v = watch_json(run)
    assert res.exit_code == 1  # no step could be read: no_steps
    assert "watch.bad_line" in codes(v) and "watch.no_steps" in codes(v)
    assert run_cli("report", run).exit_code == 0


def test_tensorboard_record_claiming_a_huge_length_is_a_bad_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    head = struct.pack("<Q", 1 << 62)
    (run / "events.out.tfevents.1.host").write_bytes(head + struct.pack("<I", masked_crc32c(head)) + b"x" * 64)
    res, v = watch_json(run)
    assert res.exit_code == 1 and "watch.bad_line" in codes(v)


# ------------------------------------------------------------------------ a line size limit
def test_a_line_longer_than_the_limit_is_skipped_and_reported_in_bounded_memory(tmp_path):
    path = tmp_path / "metrics.jsonl"
    big = '{"a": "' + "x" * 50_000 + '"}'
    path.write_text(json.dumps(step_line(0)) + "\n" + big + "\n" + json.dumps(step_line(1)) + "\n")
    tail = JsonLinesTail(path, chunk_size=1024, max_line=4096)
    items = list(tail.poll())
    assert [i["step"] for i in items if isinstance(i, dict)] == [0, 1]
    (bad,) = [i for i in items if isinstance(i, BadLine)]
    assert bad.line_no == 2 and "too long" in bad.reason and str(len(big)) in bad.reason


def test_an_endless_line_never_held_whole(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = LineTail(path, chunk_size=1024, max_line=4096)
    path.write_text("")
    for _ in range(40):  # 40 KiB without a newline, in pieces, as a writer appends it
        with open(path, "a") as fh:
            fh.write("y" * 1024)
        assert list(tail.poll()) == []
        assert len(tail._pending) <= 4096 + 1024
    with open(path, "a") as fh:
        fh.write("\n{}\n")
    lines = [raw for _, raw in tail.poll()]
    assert lines[0].startswith(b"\x00line too long") and lines[1] == b"{}"


# ------------------------------------------------------------- only regular files are read
def _cli_subprocess(*args, timeout=60):
    """The real command in a child: a hang fails the test instead of stalling the suite."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "healthcheck", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("kind", ["fifo", "dir", "loop", "device"])
@pytest.mark.parametrize("which", ["health.jsonl", "metrics.jsonl"])
def test_odd_file_kinds_are_one_sentence_and_exit_2(tmp_path, kind, which):
    run = write_run(tmp_path / "run", 20)
    target = run / which
    if target.exists():
        target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dir":
        target.mkdir()
    elif kind == "loop":
        os.symlink(which, target)
    else:
        os.symlink("/dev/zero", target)
    for cmd in (["watch", run, "--once"], ["watch", run, "--once", "--format", "jsonl"], ["report", run]):
        res = _cli_subprocess(*cmd)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2, (cmd, res.stdout, res.stderr)
        assert len(err) == 1 and err[0].startswith("Error: ") and "Traceback" not in res.stderr


def test_a_fifo_policy_file_is_refused(tmp_path):
    run = write_run(tmp_path / "run", 20)
    os.mkfifo(tmp_path / "policy.toml")
    res = _cli_subprocess("watch", run, "--policy", tmp_path / "policy.toml")
    assert res.returncode == 2 and "FIFO" in res.stderr


def test_weights_refuses_a_fifo_metrics_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"loss": {"weights": {"cov": 1.0}}}}))
    os.mkfifo(run / "metrics.jsonl")
    res = _cli_subprocess("weights", run)
    assert res.returncode == 2 and "FIFO" in res.stderr


# ------------------------------------------------------- an internal error has its own status
def test_an_internal_error_is_exit_3_not_a_verdict(tmp_path, monkeypatch):
    from healthcheck.watch.runwatch import RunWatch

    def broken(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(RunWatch, "poll_all", broken)
    run = write_run(tmp_path / "run", 20)
    res = CliRunner().invoke(cli, ["watch", str(run)])
    assert res.exit_code == INTERNAL_ERROR == 3
    assert res.stderr.count("\n") == 1 and "internal error" in res.stderr and "RuntimeError: a bug" in res.stderr


# ------------------------------------------------------- run data printed to a terminal
def test_control_characters_in_run_data_are_escaped(tmp_path):
    lines = steps(20)
    lines[10]["terms"][ESC] = float("nan")
    lines[10]["weights"][ESC] = 1.0
    run = write_lines(tmp_path / "run", lines)
    res = run_cli("watch", run)
    assert res.exit_code == 1  # the NaN term is judged...
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout  # ...and named harmlessly
    assert "\\x1b]0;pwned" in res.stdout

"""Hostile run dirs, generated: `watch --once`, `report` and `weights` give a verdict
(exit 0 or 1) or one sentence and exit 2; never a traceback, never a hang, and nothing
written outside the run dir.

Profiles, as for the property suite (environment variable ``HYPOTHESIS_PROFILE``):
``ci`` (default: a few derandomized examples, part of the default suite) and
``thorough`` (many random examples, on demand).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthcheck.cli import cli

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
SETTINGS = {
    "ci": settings(derandomize=True, max_examples=12, deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
    "thorough": settings(max_examples=400, deadline=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
}[PROFILE if PROFILE in ("ci", "thorough") else "ci"]

KEYS = ["schema", "kind", "step", "epoch", "time", "rank", "loss", "terms", "weights", "primary", "lr",
        "grad_norm", "update_norm", "param_norm", "amp", "steps_taken", "batches_seen", "skipped",
        "metrics", "weight_sources", "code", "severity", "title", "where", "count", "evidence"]
NAMES = st.sampled_from(["cov", "a\"b", "a\\b", "\x1b[2J", "$x_$", "[red]x[/]", "", "é", "_total"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.just(10 ** 400),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(NAMES, inner, max_size=4)),
                      max_leaves=12)


def _dumps(obj) -> str:
    try:
        return json.dumps(obj)  # NaN and Infinity as Python writes them
    except (ValueError, OverflowError):
        return "{}"


@st.composite
def metrics_line(draw) -> str:
    i = draw(st.integers(0, 50))
    line = {"schema": 1, "kind": draw(st.sampled_from(["step", "step", "eval", "epoch", "other"])), "step": i,
            "epoch": i // 10, "time": 1.7e9 + i, "rank": 0, "loss": 1.0 / (i + 1),
            "terms": {"cov": 1.0 / (i + 1)}, "weights": {"cov": 1.0}, "lr": [1e-3],
            "grad_norm": {"_total": 1.0, "m": 1.0}}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=3)):
        line[key] = draw(VALUES)
    return _dumps(line)


LINES = st.one_of(
    metrics_line(), metrics_line(), metrics_line(),
    st.just("{}"), st.just(""), st.just("[1, 2]"), st.just('{"a": ' + "[" * 5000 + "]" * 5000 + "}"),
    st.text(max_size=40).filter(lambda t: "\n" not in t),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ").decode("latin-1")),
)
FILE_KINDS = st.sampled_from(["lines", "lines", "lines", "binary", "empty", "missing", "dir", "fifo",
                              "loop", "device", "outside"])


@st.composite
def run_dir_spec(draw) -> dict:
    spec = {}
    for name in ("metrics.jsonl", "health.jsonl", "metrics.csv", "config.json"):
        csv_kinds = st.sampled_from(["missing"] * 4 + ["binary", "lines"])
        kind = draw(FILE_KINDS if name != "metrics.csv" else csv_kinds)
        if kind == "lines":
            spec[name] = (kind, draw(st.lists(LINES, max_size=25)), draw(st.booleans()))  # torn last line?
        elif kind == "binary":
            spec[name] = (kind, draw(st.binary(max_size=300)), False)
        else:
            spec[name] = (kind, None, False)
    return spec


def _build(root: Path, spec: dict) -> tuple[Path, Path]:
    run, outside = root / "run", root / "outside.txt"
    run.mkdir()
    outside.write_text('{"kind": "step", "step": 0, "loss": 1.0}\n')
    for name, (kind, content, torn) in spec.items():
        path = run / name
        if kind == "lines":
            text = "\n".join(content) + ("" if torn else "\n")
            path.write_bytes(text.encode("utf-8", "surrogateescape"))
        elif kind == "binary":
            path.write_bytes(content)
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "dir":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "loop":
            os.symlink(name, path)
        elif kind == "device":
            os.symlink("/dev/zero", path)
        elif kind == "outside":
            os.symlink(outside, path)
    return run, outside


def _snapshot(root: Path, run: Path) -> dict:
    """Every path under ``root`` but inside ``run``, with its content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == run or run in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
    return out


def _odd(spec: dict) -> bool:
    return any(kind in ("fifo", "device", "loop", "dir") for kind, _, _ in spec.values())


def _invoke(args: list[str], odd: bool) -> tuple[int, str, str]:
    """In-process (fast) for ordinary files; in a child with a timeout where a regression
    could block (a FIFO, a device), so a hang fails the test instead of stalling it."""
    if not odd:
        res = CliRunner().invoke(cli, args)
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        return res.exit_code, res.stdout, res.stderr
    env = {**os.environ, "WANDB_MODE": "disabled"}
    p = subprocess.run([sys.executable, "-m", "healthcheck", *args], capture_output=True, text=True,
                       timeout=60, env=env)
    return p.returncode, p.stdout, p.stderr


@SETTINGS
@given(spec=run_dir_spec(), command=st.sampled_from(["watch", "report", "weights"]))
def test_hostile_run_dirs_get_a_verdict_or_one_sentence(spec, command):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run, outside = _build(root, spec)
        before = _snapshot(root, run)
        args = {"watch": ["watch", str(run), "--once", "--json"], "report": ["report", str(run)],
                "weights": ["weights", str(run)]}[command]
        status, out, err = _invoke(args, _odd(spec))
        assert "Traceback" not in out + err, err
        if status == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: "), err
        else:
            assert status in (0, 1), (status, err)  # never 3: an internal error is a bug
            if command == "watch":
                verdict = json.loads(out)
                assert verdict["healthy"] is (status == 0)
        assert _snapshot(root, run) == before  # nothing written outside the run dir


MARKER_STEPS = st.one_of(st.integers(-5, 60), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                         st.booleans(), st.text(max_size=4))


@st.composite
def resume_line(draw) -> str:
    return _dumps({"kind": "resume", "step": draw(MARKER_STEPS), "epoch": 0, "checkpoint": "c.pt"})


@SETTINGS
@given(chunks=st.lists(st.lists(st.one_of(LINES, resume_line(), resume_line()), max_size=12), min_size=1,
                       max_size=5))
def test_a_followed_run_with_resume_markers_arriving_never_breaks_the_watcher(chunks):
    """Lines, resume markers with any step among them, appended between polls: each poll
    returns, and every line read is judged, superseded or reported as bad, at most once."""
    from healthcheck.watch.runwatch import RunWatch

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        watch = RunWatch(run)
        written = 0
        for chunk in chunks:
            with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in chunk))
            written += len(chunk)
            watch.poll()
        assert watch.steps + watch.superseded <= written
        assert watch.steps >= 0 and watch.superseded >= 0
        watch.close()

"""The harness's writers never leave a run directory and fail in one sentence: health.jsonl
through a link or onto a FIFO, a planted report/ folder, an unwritable gate destination,
a policy file that does not parse, and config.json shapes `healthcheck weights` must survive."""

import errno
import json
import os

import pytest
from click.testing import CliRunner

from healthcheck.cli import cli
from healthcheck.events import HealthEvent, HealthLogWriter, Severity
from healthcheck.record import MetricsWriter, resumed_timeline
from healthcheck.safe_files import RunFileError, write_atomic
from tests.hostile import one_sentence, refusal_of_fifo


def event():
    return HealthEvent(code="loss.zero", severity=Severity.ERROR, step=1, title="t")


@pytest.mark.parametrize("writer", [HealthLogWriter, MetricsWriter])
def test_a_log_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, writer):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "log.jsonl")
    with pytest.raises(RunFileError, match="symbolic link"):
        writer(tmp_path / "log.jsonl")
    assert victim.read_text() == "precious"


def test_a_fifo_health_log_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "health.jsonl"
    os.mkfifo(fifo)
    outcome = refusal_of_fifo(fifo, lambda: HealthLogWriter(fifo).close())
    assert outcome and "not a regular file" in outcome[0]


def test_a_full_disk_is_one_sentence_naming_the_log(tmp_path, monkeypatch):
    writer = HealthLogWriter(tmp_path / "health.jsonl")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(RunFileError) as caught:
        writer.write(event())
    assert "health.jsonl" in str(caught.value) and "disk is full" in str(caught.value)


def test_write_atomic_replaces_a_link_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "gate.json")
    os.symlink(victim, tmp_path / "gate.json.tmp")
    write_atomic(tmp_path / "gate.json", b"{}")
    assert victim.read_text() == "precious"
    assert (tmp_path / "gate.json").read_bytes() == b"{}" and not (tmp_path / "gate.json").is_symlink()


def test_write_atomic_removes_its_temporary_when_the_write_fails(tmp_path):
    def half_then_full(fh):
        fh.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunFileError, match="disk is full"):
        write_atomic(tmp_path / "out.bin", half_then_full)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with MetricsWriter(run / "metrics.jsonl") as out:
        for i in range(5):
            out.write({"kind": "step", "step": i, "epoch": 0, "time": float(i), "loss": 1.0 / (i + 1),
                       "terms": {"a": 1.0}, "weights": {"a": 1.0}, "lr": [1e-3]})
    return run


def test_report_refuses_a_planted_report_folder(small_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, small_run / "report")
    one_sentence(CliRunner().invoke(cli, ["report", str(small_run)]), "report", "symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_gate_says_it_cannot_write_before_running_its_checks(tmp_path, monkeypatch):
    import healthcheck.gate as gate

    ran = []
    monkeypatch.setattr(gate, "run_checks", lambda *a, **k: ran.append(1) or [])
    target = tmp_path / "gate-dir"
    target.write_text("a file where the run dir should be")
    one_sentence(CliRunner().invoke(cli, ["gate", "--preset", "tiny", "--run-dir", str(target / "sub")]))
    assert ran == []


@pytest.mark.parametrize("name, text", [
    ("p.toml", b"[actions\nx = "),
    ("p.yaml", b"actions: [unclosed\n  - {"),
    ("p.yml", b"!!python/object:os.system {}"),
    ("p.json", b"{nope"),
    ("p.toml", b"\xff\xfe\x00"),
    ("p.json", b"[" * 100_000),
])
def test_a_policy_file_that_does_not_parse_is_one_sentence(small_run, tmp_path, name, text):
    policy = tmp_path / name
    policy.write_bytes(text)
    one_sentence(CliRunner().invoke(cli, ["watch", str(small_run), "--once", "--policy", str(policy)]), name)


def test_a_resume_mark_replaces_the_replayed_lines():
    lines = [{"kind": "step", "step": s} for s in range(5)] + [{"kind": "epoch", "step": 2}]
    lines += [{"kind": "resume", "step": 3}] + [{"kind": "step", "step": s, "again": True} for s in (3, 4, 5)]
    kept = resumed_timeline(lines)
    assert [(l["step"], l.get("again", False)) for l in kept] == [
        (0, False), (1, False), (2, False), (2, False), (3, True), (4, True), (5, True)]
    assert all(l["kind"] != "resume" for l in kept)


def test_a_resume_mark_without_a_number_changes_nothing():
    lines = [{"kind": "step", "step": 1}, {"kind": "resume", "step": "x"}, {"kind": "step", "step": 2}]
    assert resumed_timeline(lines) == [lines[0], lines[2]]


CONFIG_SHAPES = [
    {"config": {"loss": {"weights": [1, 2]}}},
    {"config": {"loss": 3}},
    {"config": [], "sources": "x"},
    {"config": {}, "weights_history": {"term": "cov"}},
    {"config": {}, "weights_history": [{"term": ["cov"]}, {"term": "cov"}, {"term": "cov", "step": "7", "value": "x"},
                                       {"term": "cov", "step": 3, "value": 2e308 * 10}]},
    {"config": {}, "weights_history": [{"term": "cov", "step": 10**30, "value": 10**400}]},
    {"config": {}, "primary": ["cov"]},
    {"config": {}, "primary": 7},
]


@pytest.mark.parametrize("blob", CONFIG_SHAPES)
def test_weights_reads_config_json_of_any_shape(small_run, blob):
    (small_run / "config.json").write_text(json.dumps(blob))
    with open(small_run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"kind": "step", "step": "9", "weights": {"cov": "x"}, "weight_sources": [1],
                             "primary": {"a": 1}}) + "\n")
    for args in (["weights", str(small_run)], ["weights", str(small_run), "--json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code in (0, 2), (result.output, result.exc_info)
        assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None)))

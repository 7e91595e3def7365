from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from healthcheck import codes as E
from healthcheck.codes import CODES
from healthcheck.events import HealthEvent, HealthLogWriter, Severity, read_events

EVENTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_severity_is_ordered_and_parses():
    assert Severity.INFO < Severity.WARNING < Severity.ERROR < Severity.CRITICAL
    assert Severity.parse("Warning") is Severity.WARNING
    assert Severity.parse(Severity.ERROR) is Severity.ERROR
    assert str(Severity.CRITICAL) == "critical"


def test_severity_parse_error_lists_choices():
    with pytest.raises(ValueError) as err:
        Severity.parse("fatal")
    msg = str(err.value)
    assert "'fatal'" in msg and all(s in msg for s in ("info", "warning", "error", "critical"))


def test_every_code_is_documented():
    for code, info in CODES.items():
        # the name may hold digits after its first letter: preflight codes mirror check names
        assert re.fullmatch(r"[a-z]+\.[a-z][a-z0-9_]*", code), code
        assert info.meaning.strip().endswith(".") and len(info.meaning) > 20, code
        assert info.fix.strip() and len(info.fix) > 20, code
        assert isinstance(info.severity, Severity)


def test_codes_table_has_one_row_per_code():
    table = E.codes_table_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([^`]+)`", r).group(1) for r in rows] == sorted(CODES)
    for code, info in CODES.items():
        assert f"| `{code}` | {info.severity} |" in table


def test_readme_table_matches_registry():
    if not EVENTS_DOC.exists() or "| `loss.nonfinite` |" not in EVENTS_DOC.read_text():
        pytest.skip("docs/events.md does not carry the codes table yet")
    assert E.codes_table_markdown() in EVENTS_DOC.read_text()


def test_register_code_rejects_a_changed_meaning(monkeypatch):
    monkeypatch.setattr(E, "_CODES", dict(E._CODES))  # keep the shared registry untouched
    E.register_code("custom.thing", "warning", "Something custom happened.", "Do the custom fix.")
    E.register_code("custom.thing", "warning", "Something custom happened.", "Do the custom fix.")  # same: fine
    with pytest.raises(ValueError, match="custom.thing"):
        E.register_code("custom.thing", "error", "Something else.", "Another fix.")
    with pytest.raises(ValueError, match="code='NoDot'"):
        E.register_code("NoDot", "info", "x", "y")


def _event(**over) -> HealthEvent:
    fields = dict(code="grad.nonfinite", severity="critical", step=7, epoch=1, time=123.5,
                  title="t", detail="d", evidence={"norm": math.nan, "big": math.inf, "n": 3},
                  where="head", hint="h")
    fields.update(over)
    return HealthEvent(**fields)


def test_event_round_trip_with_non_finite_evidence():
    ev = _event()
    line = ev.to_json()
    assert "NaN" in line and "Infinity" in line  # the tokens Python's json reads back
    back = HealthEvent.from_dict(json.loads(line))
    assert back.code == ev.code and back.severity is Severity.CRITICAL and back.where == "head"
    assert math.isnan(back.evidence["norm"]) and back.evidence["big"] == math.inf
    assert back.evidence["n"] == 3 and back.step == 7 and back.count == 1
    assert json.loads(line)["schema"] == 1


def test_event_rejects_non_numeric_evidence():
    with pytest.raises(TypeError, match="source='hpo'"):
        _event(evidence={"source": "hpo"})


def test_from_dict_ignores_unknown_keys():
    d = _event().to_dict()
    d["added_in_schema_2"] = {"x": 1}
    assert HealthEvent.from_dict(d).code == "grad.nonfinite"


def test_writer_fsyncs_every_event(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    path = tmp_path / "run" / "health.jsonl"
    with HealthLogWriter(path) as w:
        for i in range(3):
            w.write(_event(step=i))
            assert len(calls) == i + 1  # on disk before write() returns
    assert [e.step for e in read_events(path)] == [0, 1, 2]


def test_reader_skips_torn_last_line_and_garbage(tmp_path):
    path = tmp_path / "health.jsonl"
    good = [_event(step=i).to_json() for i in range(2)]
    torn = _event(step=9).to_json()[:40]
    path.write_text(good[0] + "\nnot json at all\n[1, 2]\n" + good[1] + "\n" + torn)
    with pytest.warns(RuntimeWarning, match="skipped 2 line"):
        events = read_events(path)
    assert [e.step for e in events] == [0, 1]


def test_writer_after_a_torn_line_starts_a_new_line(tmp_path):
    path = tmp_path / "health.jsonl"
    path.write_text(_event(step=0).to_json() + "\n" + '{"code": "loss.zer')
    with HealthLogWriter(path) as w:
        w.write(_event(step=1))
    with pytest.warns(RuntimeWarning):
        events = read_events(path)
    assert [e.step for e in events] == [0, 1]


def test_read_missing_file_is_empty(tmp_path):
    assert read_events(tmp_path / "nope.jsonl") == []

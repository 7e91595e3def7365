"""The codes table in the docs is generated from the registry, and the committed one is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from healthcheck import codes
from healthcheck.codes import CODES, Code
from healthcheck.events import Severity

ROOT = Path(__file__).resolve().parents[2]


def documents_with_the_table() -> list[Path]:
    candidates = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in candidates if p.exists() and codes.table_in(p.read_text(encoding="utf-8")) is not None]


def test_one_document_holds_the_codes_table():
    assert len(documents_with_the_table()) == 1


@pytest.mark.parametrize("path", documents_with_the_table(), ids=lambda p: p.name)
def test_the_committed_codes_table_is_current(path):
    table = codes.table_in(path.read_text(encoding="utf-8"))
    assert table == codes.codes_table_markdown(), (
        f"the codes table in {path.relative_to(ROOT)} is out of date: "
        f"run python -m healthcheck.codes --write {path.relative_to(ROOT)}")


def test_write_replaces_only_the_block_and_check_reports_a_stale_one(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Codes\n\nbefore\n{codes.START}\n| stale |\n{codes.END}\nafter\n", encoding="utf-8")
    assert codes.main(["--check", str(doc)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert codes.main(["--write", str(doc)]) == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Codes\n\nbefore\n") and text.endswith(f"{codes.END}\nafter\n")
    assert codes.table_in(text) == codes.codes_table_markdown()
    assert codes.main(["--check", str(doc)]) == 0
    assert codes.rewrite(doc) is False  # already current: the file is left as it is


def test_write_needs_the_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("no table here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="codes:start"):
        codes.rewrite(doc)


def test_a_code_with_two_tiers_shows_both():
    info = CODES["param.update_ratio"]
    assert info.severity is Severity.WARNING and info.raised_to == (Severity.ERROR,)
    assert "| `param.update_ratio` | warning | error |" in codes.codes_table_markdown()


def test_code_declarations_check_their_text_and_tiers():
    with pytest.raises(ValueError, match="code='Bad Code'"):
        Code("Bad Code", Severity.INFO, meaning="m.", fix="f.")
    with pytest.raises(ValueError, match="raised tier"):
        Code("x.y", Severity.ERROR, Severity.WARNING, meaning="m.", fix="f.")
    with pytest.raises(ValueError, match="meaning and a fix"):
        Code("x.y", Severity.ERROR, meaning="", fix="f.")
    code = Code("x.y", "warning", "error", meaning="Something.", fix="Fix it.", repeats=True)
    assert code == "x.y" and {code: 1}["x.y"] == 1
    assert code.info == codes.CodeInfo(Severity.WARNING, "Something.", "Fix it.", True, (Severity.ERROR,))
    assert "x.y" not in CODES  # a declaration alone registers nothing


def test_a_code_copies_and_pickles_as_its_string():
    import copy
    import pickle

    from healthcheck.detectors import ZeroLoss

    code = ZeroLoss.codes[0]
    assert isinstance(code, Code)
    assert copy.deepcopy(code) == "loss.zero" and pickle.loads(pickle.dumps(code)) == "loss.zero"


@pytest.mark.parametrize("code", ["grad.dead_units", "steps.skipped", "grad.growing", "lr.tiny"])
def test_codes_emitted_at_two_tiers_show_both(code):
    info = CODES[code]
    assert info.severity is Severity.WARNING and info.raised_to == (Severity.ERROR,)
    assert f"| `{code}` | warning | error |" in codes.codes_table_markdown()


def test_a_detector_cannot_emit_a_tier_its_code_does_not_declare(monkeypatch):
    from hc_fakes import healthy_step

    from healthcheck.detectors import NO_EVENTS, Detector

    monkeypatch.setattr(codes, "_CODES", dict(codes._CODES))  # the class registers its code

    class Loud(Detector):
        codes = (Code("loud.tier", Severity.WARNING, meaning="A test code emitted at one tier.",
                      fix="Declare every tier the detector emits."),)

        def check(self, record, state, live):
            if not record.step:
                return NO_EVENTS
            return (self.event("loud.tier", record, title="loud", severity=Severity.ERROR),)

    det = Loud()
    assert det.event("loud.tier", healthy_step(0), title="ok").severity is Severity.WARNING
    with pytest.raises(ValueError, match="does not declare"):
        det.check(healthy_step(1), det.new_state(), None)


def test_register_code_takes_raised_tiers(monkeypatch):
    monkeypatch.setattr(codes, "_CODES", dict(codes._CODES))
    codes.register_code("custom.tiered", "warning", "A user's code with two tiers.",
                        "Whatever the user's detector says.", raised_to=("error",))
    assert "| `custom.tiered` | warning | error |" in codes.codes_table_markdown()

"""The walk-through in docs/adding-a-detector.md: its code blocks run as they are written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from healthcheck import codes

DOC = Path(__file__).resolve().parents[3] / "docs" / "adding-a-detector.md"


@pytest.fixture
def private_registry(monkeypatch):
    """A copy of the registry for the example's codes, so other tests see the built-ins only."""
    assert len(codes.CODES) > 40  # every built-in code is in before the copy is made
    monkeypatch.setattr(codes, "_CODES", dict(codes._CODES))


def test_the_walk_through_runs_as_written(private_registry):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 4
    namespace: dict = {"__name__": "adding_a_detector"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # the blocks' own asserts run here
    detector = namespace["NegativeLoss"]
    assert codes.CODES["loss.negative"] == detector.codes[0].info
    assert "export.stale" in codes.CODES
    assert "loss.negative" in codes.codes_table_markdown()

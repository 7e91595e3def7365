"""The README is a front page and every page it leads to exists.

Links between the documents are relative paths without anchors: a heading can be renamed
without breaking anything, and a moved or deleted page fails here instead of in a reader's
browser.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 200

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, …


def relative_links(page: Path) -> list[str]:
    """Link and image targets of a markdown page that point into the repository."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return [t for t in _LINK.findall(text) if not _EXTERNAL.match(t)]


def test_the_docs_exist():
    assert README.is_file()
    assert DOCS, "docs/ holds no markdown page"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in relative_links(page):
        if "#" in target:
            broken.append(f"{target} (links carry no anchor; link the page)")
        elif not (page.parent / target).resolve().is_file():
            broken.append(f"{target} (no such file)")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move the detail into docs/")


def test_readme_links_every_doc():
    linked = {(README.parent / t).resolve() for t in relative_links(README)}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README.md's Documentation list does not link {missing}"


def test_codes_table_sits_between_its_markers():
    text = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    assert text.count("<!-- codes:start -->") == 1 and text.count("<!-- codes:end -->") == 1
    start, end = text.index("<!-- codes:start -->"), text.index("<!-- codes:end -->")
    assert start < end and "| `loss.zero` |" in text[start:end]


def test_link_finder_sees_links_and_skips_code():
    page = "[a](docs/a.md) ![img](b.png) [web](https://example.org) `[c](c.md)`\n```\n[d](d.md)\n```\n"
    text = _CODE_SPAN.sub("", _FENCE.sub("", page))
    assert [t for t in _LINK.findall(text) if not _EXTERNAL.match(t)] == ["docs/a.md", "b.png"]

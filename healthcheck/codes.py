"""The registry of event codes: what each code means, how bad it is, and the usual fix.

Codes are the public vocabulary of the harness: a user silences or re-grades a finding by
its code, the docs carry one table of them, and health.jsonl stores them, so a code, once
published, never changes its meaning.

A code is declared where it is emitted, as a `Code` next to the rule that raises it: a
detector lists its codes in its ``codes`` attribute and `Detector` registers them when the
class is defined; a module that emits codes of its own (the monitor, the preflight checks,
``healthcheck watch``) passes them to `declare`. `CODES` therefore fills as those modules
are imported; reading it imports every module in `DECLARED_IN` first, so the registry a
policy validates against is always complete. A user's own detector declares its codes the
same way; `register_code` stays for codes without a detector class.

The table in the docs is generated from here (``python -m healthcheck.codes --write
README.md``) between the ``<!-- codes:start -->`` and ``<!-- codes:end -->`` markers; a test
fails when the committed table is out of date.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .events import Severity

# modules whose import declares codes outside a detector class; `CODES` imports them on
# first read (the detectors package declares every built-in detector's codes)
DECLARED_IN = ("healthcheck.detectors", "healthcheck.monitor", "healthcheck.preflight",
                "healthcheck.watch.runwatch", "healthcheck.integrations.torch_loop")

START, END = "<!-- codes:start -->", "<!-- codes:end -->"


@dataclass(frozen=True)
class CodeInfo:
    """What the registry knows about one event code."""

    severity: Severity  # default severity; a policy may re-grade it
    meaning: str  # one sentence: what was observed
    fix: str  # one sentence: what usually causes it and what to change
    repeats: bool = False  # every occurrence is news of its own: never folded into a count
    raised_to: tuple[Severity, ...] = ()  # higher tiers the emitter uses when it is worse


class Code(str):
    """An event code with its registry text, declared next to the rule that emits it::

        codes = (Code("loss.zero", Severity.ERROR,
                      meaning="The back-propagated total is zero ...",
                      fix="A weight that multiplies the main term is 0 ..."),)

    The first severity is the default; further ones are the tiers the emitter raises the
    event to when the finding is worse (``Code("lr.tiny", Severity.WARNING, Severity.ERROR,
    ...)``), so the table shows every severity a code can carry. A `Code` is the code
    string itself, so it compares, hashes and serialises as one.
    """

    severity: Severity
    meaning: str
    fix: str
    repeats: bool
    raised_to: tuple[Severity, ...]

    def __new__(cls, code: str, severity: str | Severity, *raised_to: str | Severity,
                meaning: str, fix: str, repeats: bool = False) -> Code:
        _check_name(code)
        if not meaning or not fix:
            raise ValueError(f"code {code!r} needs both a meaning and a fix text")
        self = super().__new__(cls, code)
        self.severity = Severity.parse(severity)
        self.raised_to = tuple(Severity.parse(s) for s in raised_to)
        if any(s <= self.severity for s in self.raised_to):
            raise ValueError(f"code {code!r}: a raised tier must be above the default "
                             f"{self.severity}, but got {[str(s) for s in self.raised_to]}")
        self.meaning, self.fix, self.repeats = meaning, fix, repeats
        return self

    @property
    def info(self) -> CodeInfo:
        return CodeInfo(self.severity, self.meaning, self.fix, self.repeats, self.raised_to)

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # copies and pickles (events, multiprocessing) carry the plain code string
        return (str, (str(self),))


_CODES: dict[str, CodeInfo] = {}
_loaded = False


def _check_name(code: object) -> None:
    if not isinstance(code, str) or code.count(".") < 1 or code != code.strip().lower() or " " in code:
        raise ValueError(f"an event code is 'family.name' in lower case, but got {code=}")


def _add(code: str, info: CodeInfo) -> None:
    old = _CODES.get(code)
    if old is not None and old != info:
        raise ValueError(f"code {code!r} is already registered with a different meaning")
    _CODES[code] = info


def declare(*codes: Code) -> tuple[Code, ...]:
    """Register codes emitted outside a detector class; returns them for the module to keep."""
    for code in codes:
        if not isinstance(code, Code):
            raise TypeError(f"declare() takes Code(...) declarations, but got {code!r}")
        _add(str(code), code.info)
    return codes


def register_code(code: str, severity: str | Severity, meaning: str, fix: str, *,
                  repeats: bool = False, raised_to: tuple[str | Severity, ...] = ()) -> None:
    """Add a code for a user-written detector, so policies can name it.

    A code is ``family.name`` in lower case; registering an existing code with different
    text is an error (published codes don't change meaning). ``raised_to``: the higher
    tiers the detector may emit it at, as for `Code`.
    """
    declared = Code(code, severity, *raised_to, meaning=meaning, fix=fix, repeats=repeats)
    _load()
    _add(code, declared.info)


def _load() -> None:
    """Import the modules that declare built-in codes, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # before the imports: a module that reads CODES while loading must not recurse
    try:
        for name in DECLARED_IN:
            importlib.import_module(name)
    except BaseException:
        _loaded = False
        raise


class _Registry(Mapping[str, CodeInfo]):
    """A read-only view of the registry that is complete whenever it is read."""

    def __getitem__(self, code: str) -> CodeInfo:
        _load()
        return _CODES[code]

    def __iter__(self) -> Iterator[str]:
        _load()
        return iter(list(_CODES))

    def __len__(self) -> int:
        _load()
        return len(_CODES)

    def __contains__(self, code: object) -> bool:
        _load()
        return code in _CODES

    def __repr__(self) -> str:
        return f"CODES({len(self)} codes)"


CODES: Mapping[str, CodeInfo] = _Registry()


def iter_codes(pattern: str) -> Iterator[str]:
    """Registered codes matching an exact code or a glob such as ``grad.*``."""
    from fnmatch import fnmatchcase
    for code in CODES:
        if fnmatchcase(code, pattern):
            yield code


# ---------------------------------------------------------------------------- the table
def codes_table_markdown() -> str:
    """The docs' table of event codes, generated from the registry."""
    rows = ["| code | default severity | raised to | meaning | usual fix |",
            "| --- | --- | --- | --- | --- |"]
    for code in sorted(CODES):
        info = CODES[code]
        raised = ", ".join(str(s) for s in info.raised_to)
        rows.append(f"| `{code}` | {info.severity} | {raised} | {_cell(info.meaning)} | {_cell(info.fix)} |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_BLOCK = re.compile(re.escape(START) + r"\n(.*?)" + re.escape(END), re.S)


def table_in(text: str) -> str | None:
    """The table between the markers of a document's text, or None without markers."""
    m = _BLOCK.search(text)
    return None if m is None else m.group(1)


def rewrite(path: str | Path) -> bool:
    """Replace the table between the markers in ``path``; True if the file changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if table_in(text) is None:
        raise ValueError(f"{path}: no {START} ... {END} block to rewrite")
    new = _BLOCK.sub(lambda m: f"{START}\n{codes_table_markdown()}{END}", text, count=1)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m healthcheck.codes",
        description="Print the table of event codes, or rewrite it in a document between "
                    f"the {START} and {END} markers.")
    parser.add_argument("--write", metavar="FILE", action="append", default=[],
                        help="rewrite the table in FILE (repeatable)")
    parser.add_argument("--check", metavar="FILE", action="append", default=[],
                        help="exit 1 if the table in FILE is out of date (repeatable)")
    args = parser.parse_args(argv)
    if not args.write and not args.check:
        sys.stdout.write(codes_table_markdown())
        return 0
    status = 0
    for path in args.write:
        print(f"{path}: {'rewritten' if rewrite(path) else 'up to date'}")
    for path in args.check:
        if table_in(Path(path).read_text(encoding="utf-8")) != codes_table_markdown():
            print(f"{path}: the codes table is out of date; run python -m healthcheck.codes "
                  f"--write {path}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":  # pragma: no cover
    # run the imported module's main: the registry lives in healthcheck.codes, not __main__
    from healthcheck.codes import main as _main

    raise SystemExit(_main())

"""The gate: run the preflight checks, decide, and write the verdict to ``gate.json``.

A sweep spends hours of compute on one config; the gate spends seconds to show that the
config can learn at all before any of it is spent. ``run_gate`` is model-agnostic (it
takes a preflight subject, see `healthcheck.preflight`); ``healthcheck.ris.gate_subject``
builds the subject for ``ris_model`` and adds its config and W&B checks.

``gate.json`` (docs/run-dir.md) is written atomically, so a reader (the HPO, ``healthcheck
report``) sees the previous verdict or the new one, never half of one::

    {"schema": 1, "passed": bool, "checks": [{name, passed, verdict, measured, detail,
     hint, seconds}, ...], "config_hash": str | null, "time": unix seconds,
     "seconds": float, "versions": {"python", "torch", "healthcheck"}, "subject": str}
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .preflight import Check, run_checks
from .safe_files import writable_dir, write_atomic

GATE_FILE = "gate.json"
SCHEMA = 1


@dataclass(frozen=True)
class GateVerdict:
    """Passed when no check failed; skipped checks say why they could not judge."""

    checks: tuple[Check, ...]
    config_hash: str | None = None
    time: float = field(default_factory=time.time)
    seconds: float = 0.0
    versions: Mapping[str, str] = field(default_factory=dict)
    subject: str = ""

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks are {', '.join(c.name for c in self.checks)}")

    def summary(self) -> str:
        """One line: ``gate passed (9 checks, 12.3 s)`` or ``gate FAILED: a, b``."""
        if self.passed:
            skipped = [c.name for c in self.checks if c.verdict == "skipped"]
            extra = f"; skipped: {', '.join(skipped)}" if skipped else ""
            return f"gate passed ({len(self.checks)} checks, {self.seconds:.1f} s{extra})"
        return f"gate FAILED: {', '.join(c.name for c in self.failed)}"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "passed": self.passed, "checks": [c.to_dict() for c in self.checks],
                "config_hash": self.config_hash, "time": self.time, "seconds": round(self.seconds, 3),
                "versions": dict(self.versions), "subject": self.subject}


def versions() -> dict[str, str]:
    """Python, torch and this package's version, so a verdict says what it was judged with."""
    out = {"python": platform.python_version()}
    torch = sys.modules.get("torch")
    out["torch"] = getattr(torch, "__version__", "not imported") if torch else "not imported"
    out["healthcheck"] = _own_version()
    return out


def _own_version() -> str:
    from importlib import metadata

    try:
        dists = metadata.packages_distributions().get(__package__ or "healthcheck", [])
        return metadata.version(dists[0]) if dists else "unknown"
    except Exception:  # an uninstalled checkout still gets a verdict
        return "unknown"


def run_gate(subject: Any | None, *, checks: Iterable[Callable[[Any], Check]] | None = None,
             prior: Sequence[Check] = (), extra: Iterable[Callable[[], Check]] = (),
             run_dir: str | os.PathLike | None = None, config_hash: str | None = None,
             on_check: Callable[[Check], None] | None = None, subject_name: str = "") -> GateVerdict:
    """Run the checks on ``subject`` and, with ``run_dir``, write ``gate.json`` there.

    Args:
        subject: a preflight subject, or None when ``prior`` already failed and nothing
            could be built (a config that does not load).
        checks: subject checks (default: `preflight.default_checks`).
        prior: checks already made (e.g. the config), reported first.
        extra: checks that need no subject (e.g. the logger), run last.
        on_check: called with each `Check` as it completes (progress output).
    """
    if run_dir is not None:
        writable_dir(run_dir)  # a gate that cannot write its verdict says so before its checks
    start = time.perf_counter()
    results = list(prior)
    if on_check is not None:
        for c in prior:
            on_check(c)
    if subject is not None:
        results += run_checks(subject, checks, on_check)
    for fn in extra:
        c = fn()
        results.append(c)
        if on_check is not None:
            on_check(c)
    verdict = GateVerdict(checks=tuple(results), config_hash=config_hash, seconds=time.perf_counter() - start,
                          versions=versions(), subject=subject_name)
    if run_dir is not None:
        write_verdict(verdict, run_dir)
    return verdict


def write_verdict(verdict: GateVerdict, run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/gate.json`` through an exclusive temp file and a rename (never
    half-written, never through a link planted in the run dir)."""
    run_dir = Path(writable_dir(run_dir))
    target = run_dir / GATE_FILE
    write_atomic(target, (json.dumps(verdict.to_dict(), indent=2) + "\n").encode("utf-8"))
    return target


def read_verdict(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The verdict in ``RUN_DIR/gate.json`` as written, or None when there is none."""
    path = Path(run_dir) / GATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------ rendering
_MARK = {"passed": "ok", "failed": "FAIL", "skipped": "skip"}


def progress_line(check: Check) -> str:
    """One line per completed check, for progress output while the gate runs."""
    line = f"  {_MARK[check.verdict]:4} {check.name:<20} {check.seconds:6.2f} s"
    if check.verdict != "passed" and check.detail:
        line += f"  {check.detail}"
    return line


def format_measured(measured: Mapping[str, Any], limit: int = 6) -> str:
    """``k=v, …`` with numbers to 4 significant digits; at most ``limit`` entries."""
    items = []
    for key, value in list(measured.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        items.append(f"{key}={value}")
    more = len(measured) - limit
    return ", ".join(items) + (f", … (+{more})" if more > 0 else "")


def render_table(verdict: GateVerdict) -> Any:
    """A rich Table: each check, its result, what it measured, and what to do."""
    from rich.table import Table
    from rich.text import Text

    style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    title = verdict.summary() + (f" — config {verdict.config_hash}" if verdict.config_hash else "")
    table = Table(title=title, title_justify="left", show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("measured", overflow="fold", max_width=48)
    table.add_column("finding / hint", overflow="fold")
    for c in verdict.checks:
        finding = Text(c.detail or "")
        if c.verdict == "failed" and c.hint:
            finding.append("\n→ " + c.hint, style="dim")
        table.add_row(c.name, Text(c.verdict, style=style[c.verdict]), format_measured(c.measured), finding)
    return table


__all__ = ["GATE_FILE", "GateVerdict", "format_measured", "progress_line", "read_verdict", "render_table", "run_gate",
           "versions", "write_verdict"]

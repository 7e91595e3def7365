"""`healthcheck weights RUN_DIR`: every loss weight of a run, where it came from, and how it moved.

The seed report's question was "what was the primary weight, really, and who set it?":
the weight had been set in several places and the last writer won silently. A run dir
answers it from two records that are written independently:

- config.json: the resolved config, the source of each config value, and
  ``weights_history``, the changes the trainer made on purpose (``[{term, value, source,
  epoch, step}]``);
- metrics.jsonl: the weights each step actually used (``weights``, ``weight_sources``).

A change that shows up in the steps but not in the history was made behind the
trainer's back (an in-place overwrite, a swapped weights object): that is the seed bug's
signature, so it is flagged instead of merged away.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import click

from .jsonl import read_jsonl
from .watch.reading.errors import RunLogError, stat_regular

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


class WeightsViewError(ValueError):
    """A run dir whose weights cannot be read; the message is one sentence a user can act on."""


@dataclass(frozen=True)
class Change:
    """One value a weight took during the run, from ``step`` on."""

    value: float | None  # None: the run logged something that is not a number
    step: int | None
    epoch: int | None
    source: str
    recorded: bool  # listed in config.json's weights_history (False: only the steps saw it)


@dataclass
class TermWeights:
    term: str
    value: float | None  # effective now: the last step's weight (else the last recorded one)
    primary: bool
    source: str  # who set the current value, as the run recorded it
    configured: float | None  # the value in config.json's resolved config
    changes: list[Change] = field(default_factory=list)

    @property
    def unrecorded(self) -> list[Change]:
        return [c for c in self.changes if not c.recorded]

    @property
    def source_is_stale(self) -> bool:
        """The current value came from an unrecorded change, so ``source`` names an older writer."""
        return bool(self.changes) and not self.changes[-1].recorded and _same(self.changes[-1].value, self.value)


@dataclass
class WeightsView:
    run_dir: str
    primary: str | None
    last_step: int | None  # the last step line read (None: no metrics yet)
    terms: list[TermWeights]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for row, plain in zip(self.terms, out["terms"]):
            plain["source_is_stale"] = row.source_is_stale
        return out


# ------------------------------------------------------------------------- reading
def _load_config(run_dir: str) -> dict[str, Any]:
    if not os.path.isdir(run_dir):
        what = "is a file, not a directory" if os.path.exists(run_dir) else "does not exist"
        raise WeightsViewError(f"run dir {run_dir!r} {what}; pass the directory a training run wrote")
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise WeightsViewError(f"{run_dir!r} has no {CONFIG_FILE}, so its loss weights are unknown; "
                               f"pass a run directory (training writes {CONFIG_FILE} when it starts)")
    try:
        with open(path, encoding="utf-8") as fh:
            blob = json.load(fh)
    except (ValueError, RecursionError) as err:
        raise WeightsViewError(f"{path} is not valid JSON ({err}); was the run killed while writing it?") from None
    if not isinstance(blob, dict):
        raise WeightsViewError(f"{path} holds a JSON {type(blob).__name__}, not the object a run writes")
    return blob


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        return None


def _int(value: Any) -> int | None:
    """A step or epoch as written by a trainer (an int), else None: a config.json or a
    metrics line of another shape must not decide the order of the table by crashing."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _table(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _history(blob: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``weights_history`` entries with a string term, their numbers normalised."""
    raw = blob.get("weights_history")
    out = []
    for h in raw if isinstance(raw, list) else []:
        if isinstance(h, Mapping) and isinstance(h.get("term"), str):
            out.append({"term": h["term"], "value": h.get("value"), "step": _int(h.get("step")),
                        "epoch": _int(h.get("epoch")), "source": h.get("source", "?")})
    return out


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def read_weights(run_dir: str | os.PathLike, *, primary: str | None = None) -> WeightsView:
    """The data behind the table. ``primary`` overrides the primary term the run recorded."""
    run_dir = os.fspath(run_dir)
    blob = _load_config(run_dir)
    configured = _table(_table(_table(blob.get("config")).get("loss")).get("weights"))
    config_sources = _table(blob.get("sources"))
    history = _history(blob)
    metrics = os.path.join(run_dir, METRICS_FILE)
    if os.path.lexists(metrics):
        try:
            stat_regular(metrics)  # a FIFO would block the read forever, a device never end
        except RunLogError as err:
            raise WeightsViewError(str(err)) from None
    steps = [{**line, "step": _int(line.get("step")), "epoch": _int(line.get("epoch"))}
             for line in read_jsonl(metrics).objects
             if line.get("kind") == "step" and line.get("rank", 0) == 0 and isinstance(line.get("weights"), Mapping)]
    if primary is None:
        named = [blob.get("primary")] + [s.get("primary") for s in reversed(steps)]
        primary = next((p for p in named if isinstance(p, str) and p), None)

    names: list[str] = list(configured)
    for term in [h["term"] for h in history] + [t for s in steps for t in s["weights"]]:
        if term not in names:
            names.append(term)

    if primary in names:  # the primary first: it is the row to read
        names.remove(primary)
        names.insert(0, primary)
    rows = []
    for term in names:
        mine = [h for h in history if h["term"] == term]
        # The first history entries (step 0) are the starting values; the rest are changes.
        start = next((h for h in mine if (h.get("step") or 0) == 0 and (h.get("epoch") or 0) == 0), None)
        recorded = [Change(_number(h.get("value")), h.get("step"), h.get("epoch"), str(h.get("source", "?")), True)
                    for h in mine if h is not start]
        value = _number(start["value"]) if start else _number(configured.get(term))
        source = str(start["source"]) if start else str(config_sources.get(f"loss.weights.{term}", "default"))
        changes = list(recorded)
        last_step = -1
        for line in steps:
            step_value = _number(line["weights"].get(term))
            step_source = str(_table(line.get("weight_sources")).get(term, source))
            if step_value is None:
                continue
            if not _same(step_value, value):
                step = line.get("step")
                known = any(_same(c.value, step_value) and c.step is not None and last_step < c.step <= (step or 0)
                            for c in recorded)
                if not known:
                    changes.append(Change(step_value, step, line.get("epoch"), step_source, False))
            value, source = step_value, step_source
            last_step = line["step"] if line["step"] is not None else last_step
        if not steps and recorded:  # no metrics yet: the last recorded change is current
            value, source = recorded[-1].value, recorded[-1].source
        changes.sort(key=lambda c: (c.step if c.step is not None else -1, c.recorded))
        rows.append(TermWeights(term, value, term == primary, source, _number(configured.get(term)), changes))
    return WeightsView(run_dir, primary, steps[-1].get("step") if steps else None, rows)


# ------------------------------------------------------------------------ showing
def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def weights_table(run: str | os.PathLike | WeightsView):
    """A rich Table: term, value now, primary?, source, and the changes during the run."""
    from rich.table import Table
    from rich.text import Text

    view = run if isinstance(run, WeightsView) else read_weights(run)
    when = f"after step {view.last_step}" if view.last_step is not None else "no steps logged yet"
    table = Table(title=f"loss weights of {view.run_dir} ({when})", title_justify="left")
    columns: tuple[tuple[str, Literal["left", "right", "center"]], ...] = (
        ("term", "left"), ("now", "right"), ("primary", "center"), ("source", "left"),
        ("changes during the run (value@step, source)", "left"))
    for col, justify in columns:
        table.add_column(col, justify=justify, overflow="fold")
    for row in view.terms:
        dead = row.primary and not (row.value is not None and math.isfinite(row.value) and row.value > 0)
        now = Text(_fmt(row.value), style="bold white on red" if dead else ("bold" if row.primary else ""))
        changes = Text()
        for i, c in enumerate(row.changes):
            if i:
                changes.append("\n")
            changes.append(f"{_fmt(c.value)}@{'?' if c.step is None else c.step} ({c.source})")
            if not c.recorded:
                changes.append(" UNRECORDED", style="bold red")
        source = Text(row.source)
        if row.source_is_stale:
            source.append(f"\n(stale: changed at step {row.changes[-1].step} without a record)", style="red")
        table.add_row(row.term, now, "yes" if row.primary else "", source, changes if row.changes else "none")
    notes = []
    if not view.terms:
        notes.append("config.json and metrics.jsonl record no loss weights")
    elif view.primary is None:
        notes.append("the run does not name its primary term (no step logged yet)")
    if any(row.unrecorded for row in view.terms):
        notes.append("UNRECORDED: the steps used this value but config.json's weights_history has no such "
                     "change, so something outside the trainer set it")
    table.caption = "\n".join(notes) or None
    table.caption_justify = "left"
    return table


# --------------------------------------------------------------------------- command
@click.command("weights")
@click.argument("run_dir", type=click.Path(file_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True,
              help="Print the weights as JSON {run_dir, primary, last_step, terms: [...]}.")
def weights_command(run_dir: str, as_json: bool) -> None:
    """Show each loss weight of a run: its value now, whether it is the primary term,
    where it came from, and every change during the run (a change the steps saw but
    config.json's weights_history did not record is flagged).

    Exit status: 0, or 2 when RUN_DIR or its config.json cannot be read.
    """
    from .cli import HealthcheckUsageError  # here, not at import: cli registers this command

    try:
        view = read_weights(run_dir)
    except WeightsViewError as err:
        raise HealthcheckUsageError(str(err)) from None
    if as_json:
        click.echo(json.dumps(view.as_dict(), indent=2))
        return
    from rich.console import Console

    color = getattr(click.get_current_context().find_root().obj, "color", None)
    Console(file=sys.stdout, force_terminal=True if color else None, no_color=color is False,
            width=max(100, Console().width)).print(weights_table(view))


__all__ = ["Change", "TermWeights", "WeightsView", "WeightsViewError", "read_weights", "weights_command",
           "weights_table"]

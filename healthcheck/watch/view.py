"""How `watch` shows a run: a rich panel on a terminal, plain lines anywhere else.

The panel answers, at a glance, the questions docs/failure-catalogue.md says went unasked:
is it stepping (step, rate), is the loss moving (value and sparkline), is every term
pulling its weight (weighted shares), are gradients reaching every module, is the LR
non-zero, and what has been flagged (with the hint that says what to do).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .reading.fields import mapping, numbers
from .state import RunState, term_shares

SPARK = "▁▂▃▄▅▆▇█"
SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "error": "red", "critical": "bold white on red"}
MAX_EVENTS = 8  # latest events in the panel; the full list is in the verdict


# Control characters (C0, DEL, C1) in run data, written as escapes: a term name in a
# metrics file must not be able to clear the screen or retitle the watcher's terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def clean(x: Any) -> str:
    """``str(x)`` safe to print on a terminal: control characters escaped."""
    return str(x).translate(_CONTROL)


def sparkline(values: Iterable[float]) -> str:
    """One character per value; log scale when all finite values are positive.

    Loss spans decades, so a linear scale would flatten everything after the first drop.
    Non-finite values are drawn as `×` so that a NaN can't hide in the line.
    """
    values = list(values)
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "×" * len(values)
    log = all(v > 0 for v in finite)
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo, hi = min(f(v) for v in finite), max(f(v) for v in finite)
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append("×")
        elif hi == lo:
            out.append(SPARK[len(SPARK) // 2])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int((f(v) - lo) / (hi - lo) * len(SPARK)))])
    return "".join(out)


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return clean(x)
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if 1e-3 <= abs(x) < 1e5 else f"{x:.{max(digits - 1, 1)}e}"


def _ev(e: Mapping[str, Any], key: str, default: Any = None) -> Any:
    return e.get(key, default)


# ------------------------------------------------------------------------ rich panel
def render(state: RunState, events: Sequence[Mapping[str, Any]], *, status: str = "",
           now: float | None = None):
    """The live panel (a rich renderable) for the current state and events."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    s = state.last_step or {}
    head = Text()
    head.append("step ", style="dim").append(fmt(state.step), style="bold")
    head.append("  epoch ", style="dim").append(fmt(state.epoch), style="bold")
    head.append("  rate ", style="dim").append(
        "–" if state.rate is None else f"{state.rate:.3g} steps/s", style="bold")
    head.append("  lines ", style="dim").append(fmt(state.lines))
    if state.bad_lines:
        head.append(f"  bad lines {state.bad_lines}", style="yellow")
    if now is not None and state.updated is not None:
        head.append(f"  last line {max(0.0, now - state.updated):.0f}s ago", style="dim")

    loss = Text()
    loss.append("loss ", style="dim").append(fmt(s.get("loss")), style="bold")
    loss.append("  ").append(sparkline(state.losses), style="green")
    if state.last_eval is not None:
        loss.append("  val ", style="dim").append(fmt(state.last_eval.get("loss")), style="bold")

    parts: list = [head, loss]
    side: list = []  # the terms and the modules tables, side by side
    shares = term_shares(s)
    terms = mapping(s.get("terms"))
    if terms:
        t = Table(box=None, pad_edge=False, show_edge=False, expand=False)
        for col in ("term", "value", "weight", "share"):
            t.add_column(col, justify="left" if col == "term" else "right", style=None)
        t.add_column("", justify="left")
        weights = mapping(s.get("weights"))
        for name, value in terms.items():
            share = shares.get(name, math.nan)
            bar = "█" * int(round(10 * share)) if math.isfinite(share) and share > 0 else ""
            style = "red" if name == s.get("primary") and not (share > 0) else None
            t.add_row(Text(clean(name)), fmt(value), fmt(weights.get(name)),
                      "–" if not math.isfinite(share) else f"{100 * share:.1f}%",
                      Text(bar[:10], style="cyan"), style=style)
        side.append(t)

    grad, upd, par = (mapping(s.get(k)) for k in ("grad_norm", "update_norm", "param_norm"))
    if grad or upd:
        t = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("module", "grad norm", "update/param"):
            t.add_column(col, justify="left" if col == "module" else "right")
        for name in dict.fromkeys([*grad, *upd]):
            u, p = upd.get(name), par.get(name)
            ratio = u / p if isinstance(u, (int, float)) and isinstance(p, (int, float)) and p else None
            g = grad.get(name)
            style = "red" if isinstance(g, (int, float)) and (g == 0 or not math.isfinite(g)) else None
            t.add_row(Text(clean(name)), fmt(g), fmt(ratio), style=style)
        side.append(t)
    if side:
        grid = Table.grid(padding=(0, 4))
        for _ in side:
            grid.add_column(vertical="top")
        grid.add_row(*side)
        parts.append(grid)

    lr = numbers(s.get("lr"))
    if lr:
        line = Text("lr ", style="dim")
        for i, v in enumerate(lr):
            line.append(f"g{i}=", style="dim").append(fmt(v), style="red" if v == 0 else "bold")
            line.append("  ")
        parts.append(line)

    if events:
        t = Table(box=None, pad_edge=False, show_edge=False, title="latest events",
                  title_justify="left", title_style="bold")
        for col in ("severity", "code", "step", "where", "what / hint"):
            t.add_column(col, justify="right" if col == "step" else "left", overflow="fold")
        for e in list(events)[-MAX_EVENTS:]:
            sev = _ev(e, "severity", "info")
            msg = Text(clean(_ev(e, "title", "")))
            if _ev(e, "hint"):
                msg.append(f"\n→ {clean(_ev(e, 'hint'))}", style="dim")
            count = _ev(e, "count", 1) or 1
            code = clean(_ev(e, "code", "")) + (f" ×{count}" if count > 1 else "")
            t.add_row(Text(clean(sev), style=SEVERITY_STYLE.get(sev, "")), Text(code),
                      fmt(_ev(e, "step")), Text(clean(_ev(e, "where") or "")), msg)
        parts.append(t)
    else:
        parts.append(Text("no health events", style="green"))
    return Panel(Group(*parts), title=Text(f"healthcheck watch · {clean(state.name)}"),
                 subtitle=status or None, title_align="left", subtitle_align="right")


# ---------------------------------------------------------------------- plain lines
def progress_line(state: RunState) -> str:
    """One line a CI log can grep: where the run is and what the loss does."""
    s = state.last_step or {}
    lr = ",".join(fmt(v, 3) for v in numbers(s.get("lr"))) or "–"
    gn = mapping(s.get("grad_norm")).get("_total")
    rate = "–" if state.rate is None else f"{state.rate:.3g}/s"
    return (f"[{clean(state.name)}] step={fmt(state.step)} epoch={fmt(state.epoch)} rate={rate} "
            f"loss={fmt(s.get('loss'))} lr={lr} grad_norm={fmt(gn)} lines={state.lines}")


def event_line(e: Mapping[str, Any]) -> str:
    hint = f" | hint: {e['hint']}" if e.get("hint") else ""
    count = f" (x{e['count']})" if (e.get("count") or 1) > 1 else ""
    where = f" [{e['where']}]" if e.get("where") else ""
    line = (f"{str(e.get('severity', 'info')).upper():8} {e.get('code')}{where} step={fmt(e.get('step'))}: "
            f"{e.get('title', '')}{count}{hint}")
    return clean(line)

"""`healthcheck report RUN_DIR`: one self-contained HTML page about a run.

The page is for the person deciding whether a run (or an HPO study built on it) can be
trusted, after the fact: the curves, the share each loss term had in the gradient, whether
gradients reached every module and parameters moved, the learning rate, every health
event on one timeline, where each loss weight came from, and the gate's verdict. Images
are embedded (base64) so the file can be mailed or attached to CI; the PNGs are also
written next to it for slides and diffs. The run is read with the same readers and
detectors as `watch`, so a CSV or TensorBoard run gets the same judgement.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..safe_files import report_dirs, write_atomic
from ..watch.reading import KeyMap, check_readable
from ..watch.reading.fields import kind_of, mapping, step_of
from ..watch.runwatch import RunWatch
from . import plots
from .series import Series

MAX_EVENT_ROWS = 300  # the table; the timeline shows them all


@dataclass
class WeightLog:
    """The effective loss weights as the metrics saw them: first, last, and how often they changed."""

    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    first_step: int | None = None
    changes: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # latest `weight_sources` of a step line

    def add(self, line: Mapping[str, Any]) -> None:
        w = mapping(line.get("weights"))
        if kind_of(line.get("kind")) != "step" or not w:
            return
        if not self.first:
            self.first, self.first_step = dict(w), step_of(line.get("step"))
        for k, v in w.items():
            if k in self.last and not _same(self.last[k], v):
                self.changes[k] = self.changes.get(k, 0) + 1
        self.last = dict(w)
        src = line.get("weight_sources")
        if isinstance(src, Mapping) and src:
            self.sources = {str(k): str(v) for k, v in src.items()}


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@dataclass
class RunData:
    run_dir: str
    verdict: dict
    series: Series
    weights: WeightLog
    config: dict | None
    gate: dict | None
    problems: list[str]  # files that exist but could not be read


def _read_json(path: str, problems: list[str]) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError) as err:
        problems.append(f"{os.path.basename(path)} could not be read: {err}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{os.path.basename(path)} is not a JSON object")
        return None
    return data


def collect(run_dir: str, *, fmt: str = "auto", keys: KeyMap | None = None,
            detectors: Sequence[Any] | None = None, policy: Any = None,
            max_points: int = 2000) -> RunData:
    """Read and judge the whole run once, keeping what the report shows (flat memory)."""
    check_readable(run_dir, fmt)
    series, weights = Series(max_points), WeightLog()

    def on_line(line: Mapping[str, Any]) -> None:
        series.add(line)
        weights.add(line)

    watch = RunWatch(run_dir, fmt=fmt, keys=keys, detectors=detectors, policy=policy,
                     on_line=on_line)
    try:
        watch.poll_all()
        watch.conclude()
        verdict = watch.verdict()
    finally:
        watch.close()
    problems: list[str] = []
    config = _read_json(os.path.join(run_dir, "config.json"), problems)
    gate = _read_json(os.path.join(run_dir, "gate.json"), problems)
    return RunData(run_dir, verdict, series, weights, config, gate, problems)


# --------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#666}.badge{display:inline-block;padding:.15em .6em;border-radius:.4em;color:#fff;font-weight:600}
.ok{background:#2a7d2a}.bad{background:#b00020}.warn{background:#c98a00}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:.6em 0}.sev-info{color:#1f77b4}.sev-warning{color:#a06b00}
.sev-error{color:#d62728;font-weight:600}.sev-critical{color:#fff;background:#7b0000;font-weight:700}
.hint{color:#555;font-size:.9em}code{background:#f4f4f4;padding:0 .2em}details{margin:.6em 0}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return _e(x if x is not None else "–")
    if isinstance(x, int):
        return f"{x:,}"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(name)}" src="data:image/png;base64,{data}">'


def _table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]],
           numeric: Sequence[int] = ()) -> str:
    if headers is None:
        head = ""
    else:
        head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>"
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _summary(data: RunData) -> str:
    v, last = data.verdict, data.verdict["last"]
    worst = v["worst_severity"]
    badge = ('<span class="badge ok">healthy</span>' if v["healthy"] and worst in (None, "info")
             else '<span class="badge warn">warnings</span>' if v["healthy"]
             else f'<span class="badge bad">unhealthy: {_e(worst)}</span>')
    reader = v["reader"]
    rows = [["format", _e(reader["format"] or "none yet")], ["metrics lines", _num(reader["lines"])],
            ["last step / epoch", f"{_num(last['step'])} / {_num(last['epoch'])}"],
            ["last loss", _num(last["loss"])], ["last val loss", _num(last.get("val_loss"))],
            ["events", f"{len(v['events'])} (worst: {_e(worst or 'none')})"],
            ["skipped lines", _num(reader["bad_lines"])]]
    if data.config is not None:
        rows.append(["config hash", f"<code>{_e(data.config.get('config_hash'))}</code>"])
    return badge + _table(None, rows)


def _gate_html(data: RunData) -> str:
    gate = data.gate
    if gate is None:
        return "<p>No gate.json: the preflight gate was not run for this run dir.</p>"
    passed = gate.get("passed")
    out = [f'<p><span class="badge {"ok" if passed else "bad"}">gate {"passed" if passed else "FAILED"}</span> '
           f'on config <code>{_e(gate.get("config_hash"))}</code>']
    run_hash = (data.config or {}).get("config_hash")
    if run_hash and gate.get("config_hash") and run_hash != gate.get("config_hash"):
        out.append(f' <span class="badge bad">the run\'s config hash is {_e(run_hash)}: the gate '
                   f'judged a different config</span>')
    out.append("</p>")
    checks = [c for c in gate.get("checks") or [] if isinstance(c, Mapping)] \
        if isinstance(gate.get("checks"), list) else []
    if checks:
        rows = []
        for c in checks:
            ok = c.get("passed")
            rows.append([_e(c.get("name")), '<b style="color:#2a7d2a">pass</b>' if ok
                         else '<b style="color:#b00020">FAIL</b>', _e(_measured(c.get("measured"))),
                         f'<span class="hint">{_e(c.get("hint"))}</span>'])
        out.append(_table(["check", "result", "measured", "hint"], rows))
    return "".join(out)


def _measured(m: Any) -> str:
    if isinstance(m, Mapping):
        return ", ".join(f"{k}={_num(v)}" for k, v in m.items())
    return _num(m) if isinstance(m, (int, float)) else ("" if m is None else str(m))


def _events_html(data: RunData) -> str:
    events = data.verdict["events"]
    if not events:
        return "<p>No health events.</p>"
    rows = []
    for e in events[:MAX_EVENT_ROWS]:
        sev = str(e.get("severity"))
        steps = _num(e.get("step"))
        if e.get("last_step") is not None and e.get("last_step") != e.get("step"):
            steps += f"–{_num(e['last_step'])}"
        rows.append([f'<span class="sev-{_e(sev)}">{_e(sev)}</span>', f"<code>{_e(e.get('code'))}</code>",
                     steps, _e(e.get("where") or ""), _num(e.get("count", 1)), _e(e.get("source")),
                     f"{_e(e.get('title'))}<br><span class=\"hint\">{_e(e.get('hint'))}</span>"])
    more = len(events) - MAX_EVENT_ROWS
    tail = f"<p>… and {more} more (see health.jsonl or `healthcheck watch --json`).</p>" if more > 0 else ""
    return _table(["severity", "code", "step", "where", "count", "source", "what / hint"], rows,
                  numeric=(2, 4)) + tail


def _weights_html(data: RunData) -> str:
    cfg = data.config or {}
    configured = _dict(_dict(_dict(cfg.get("config")).get("loss")).get("weights"))
    sources = _dict(cfg.get("sources"))
    wl = data.weights
    names = list(dict.fromkeys([*configured, *wl.first, *wl.last]))
    if not names:
        return "<p>No loss weights in config.json or in the metrics.</p>"
    rows = []
    for n in names:
        src = sources.get(f"loss.weights.{n}")
        rows.append([f"<code>{_e(n)}</code>", _num(configured.get(n)), _e(src or ("–" if not cfg else "default")),
                     _num(wl.first.get(n)), _num(wl.last.get(n)), _e(wl.sources.get(n, "–")),
                     _num(wl.changes.get(n, 0))])
    out = [_table(["term", "configured", "config source", f"first logged (step {_num(wl.first_step)})",
                   "last logged", "set by (metrics)", "changes"], rows, numeric=(1, 3, 4, 6))]
    history = cfg.get("weights_history")
    if isinstance(history, list) and history:
        cols = list(dict.fromkeys(k for h in history if isinstance(h, Mapping) for k in h))
        hrows = [[_cell(h.get(c)) for c in cols] for h in history[:200] if isinstance(h, Mapping)]
        out.append("<h3>weights history (config.json)</h3>" + _table(cols, hrows))
    elif isinstance(history, Mapping) and history:
        out.append("<h3>weights history (config.json)</h3><pre>" +
                   _e(json.dumps(history, indent=1, sort_keys=True)) + "</pre>")
    return "".join(out)


def _dict(x: Any) -> Mapping:
    """A part of config.json or gate.json that should be an object: {} when it is not."""
    return x if isinstance(x, Mapping) else {}


def _cell(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return f"<code>{_e(json.dumps(v, sort_keys=True))}</code>"
    return _num(v) if isinstance(v, (int, float)) else _e(v)


def _config_html(data: RunData) -> str:
    cfg = data.config
    if cfg is None:
        return "<p>No config.json.</p>"
    changed = {k: v for k, v in _dict(cfg.get("sources")).items() if v != "default"}
    out = []
    if changed:
        out.append(_table(["key", "source"], [[f"<code>{_e(k)}</code>", _e(v)] for k, v in sorted(changed.items())]))
    out.append("<details><summary>resolved config</summary><pre>" +
               _e(json.dumps(cfg.get("config", cfg), indent=1, sort_keys=True)) + "</pre></details>")
    return "".join(out)


FIGURES = ("events", "loss", "shares", "grad_norm", "update_ratio", "lr")


def figures(data: RunData) -> dict[str, bytes]:
    """The report's PNGs by name."""
    s = data.series
    return {
        "events": plots.events_figure(data.verdict["events"], data.verdict["last"]["step"]),
        "loss": plots.loss_figure(s.steps, s.evals),
        "shares": plots.shares_figure(s.steps),
        "grad_norm": plots.grad_heatmap(s.steps),
        "update_ratio": plots.ratio_figure(s.steps),
        "lr": plots.lr_figure(s.steps),
    }


def render_html(data: RunData, pngs: Mapping[str, bytes]) -> str:
    name = os.path.basename(os.path.abspath(data.run_dir))
    problems = "".join(f'<p class="sev-warning">{_e(p)}</p>' for p in data.problems)
    thinned = ""
    if data.series.lines > len(data.series.steps) + len(data.series.evals) + len(data.series.epochs):
        thinned = (f'<p class="meta">{data.series.lines:,} metrics lines, thinned to '
                   f'{len(data.series.steps):,} step points for the figures (non-finite losses kept).</p>')
    sections = [
        f"<h1>Run report · {_e(name)}</h1>",
        f'<p class="meta">{_e(os.path.abspath(data.run_dir))} · generated '
        f'{_e(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>', problems,
        "<h2>Verdict</h2>", _summary(data),
        "<h2>Gate</h2>", _gate_html(data),
        "<h2>Health events</h2>", _img("events", pngs["events"]), _events_html(data),
        "<h2>Loss</h2>", thinned, _img("loss", pngs["loss"]), _img("shares", pngs["shares"]),
        "<h2>Gradients and updates</h2>", _img("grad_norm", pngs["grad_norm"]),
        _img("update_ratio", pngs["update_ratio"]),
        "<h2>Learning rate</h2>", _img("lr", pngs["lr"]),
        "<h2>Loss weights and their sources</h2>", _weights_html(data),
        "<h2>Config</h2>", _config_html(data),
    ]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Run report · {_e(name)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def write_report(run_dir: str, out: str, *, png_dir: str | None = None, fmt: str = "auto",
                 keys: KeyMap | None = None, detectors: Sequence[Any] | None = None,
                 policy: Any = None) -> str:
    """Write the HTML report to `out` and the PNGs to `png_dir` (default RUN_DIR/report)."""
    png_dir = report_dirs(run_dir, out, png_dir)  # refused now if unwritable or a planted link
    data = collect(run_dir, fmt=fmt, keys=keys, detectors=detectors, policy=policy)
    pngs = figures(data)
    for name, png in pngs.items():
        write_atomic(os.path.join(png_dir, f"{name}.png"), png, fsync=False)
    write_atomic(out, render_html(data, pngs).encode("utf-8"), fsync=False)
    return out

"""The figures of `healthcheck report`, one function per figure, each returning PNG bytes.

matplotlib is imported inside `_plt()` with the Agg backend, so importing this module (or
the CLI) costs nothing and works without a display. Every function accepts columns with
NaN holes and empty inputs: a figure says "no data" rather than failing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .series import PlotColumns

SEVERITY_COLOURS = {"info": "#1f77b4", "warning": "#e6a100", "error": "#d62728",
                    "critical": "#7b0000"}
SEVERITY_LEVEL = {"info": 0, "warning": 1, "error": 2, "critical": 3}
_SIZE = (9.0, 3.6)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _empty(title: str, why: str = "no data") -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(_SIZE[0], 1.4))
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_axis_off()
    return _png(fig)


def _log_if_positive(ax, columns: Sequence[Sequence[float]]) -> None:
    """Log scale when every finite value is > 0: losses and norms span decades."""
    vals = [v for c in columns for v in _finite(c)]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 20:
        ax.set_yscale("log")


def _text(name: object) -> str:
    """A name from the run as a matplotlib label shows it: "$x_$" as written, not parsed as
    mathtext (which fails on it); our own labels keep mathtext, log-axis ticks need it."""
    return str(name).replace("$", r"\$")


def _mark_nonfinite(ax, x: Sequence[float], y: Sequence[float], label: str) -> None:
    bad = [xi for xi, yi in zip(x, y) if not math.isfinite(yi)]
    if bad:
        ax.scatter(bad, [0.0] * len(bad), transform=ax.get_xaxis_transform(), marker="x",
                   color="red", zorder=5, label=f"{label} non-finite ({len(bad)})", clip_on=False)


def loss_figure(steps: PlotColumns, evals: PlotColumns) -> bytes:
    """Total loss and each unweighted term over steps; validation loss as dots."""
    if not len(steps) and not len(evals):
        return _empty("loss")
    plt = _plt()
    fig, ax = plt.subplots(figsize=_SIZE)
    shown = []
    if len(steps):
        ax.plot(steps.x, steps.cols["loss"], color="black", lw=1.4, label="loss (total)")
        shown.append(steps.cols["loss"])
        _mark_nonfinite(ax, steps.x, steps.cols["loss"], "loss")
        for name, col in sorted(steps.group("term/").items()):
            ax.plot(steps.x, col, lw=0.9, alpha=0.85, label=_text(f"term {name}"))
            shown.append(col)
    if len(evals):
        ax.plot(evals.x, evals.cols["loss"], "o-", ms=3, color="tab:purple", lw=0.8, label="val loss")
        shown.append(evals.cols["loss"])
    _log_if_positive(ax, shown)
    ax.set_xlabel("step")
    ax.set_title("loss and its terms (unweighted)", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncols=2)
    return _png(fig)


def shares_figure(steps: PlotColumns) -> bytes:
    """Each term's weighted share weight*term/loss, stacked: who drives the gradient."""
    shares = steps.group("share/")
    if not len(steps) or not shares:
        return _empty("weighted term shares", "no terms/weights logged")
    plt = _plt()
    fig, ax = plt.subplots(figsize=_SIZE)
    names = sorted(shares)
    ys = [[v if math.isfinite(v) else 0.0 for v in shares[n]] for n in names]
    ax.stackplot(steps.x, ys, labels=[_text(n) for n in names], alpha=0.85)
    ax.axhline(1.0, color="black", lw=0.6, ls="--")
    ax.set_ylim(bottom=min(0.0, min(min(y) for y in ys)))
    ax.set_xlabel("step")
    ax.set_ylabel("share of total loss")
    ax.set_title("weighted term shares (weight × term / loss)", loc="left")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return _png(fig)


def grad_heatmap(steps: PlotColumns, bins: int = 200) -> bytes:
    """Gradient norm per module over steps, log colour; exact zeros and NaN stand out."""
    grads = {k: v for k, v in steps.group("grad/").items() if k != "_total"}
    if not len(steps) or not grads:
        return _empty("gradient norm per module", "no per-module grad_norm logged")
    import numpy as np
    from matplotlib.colors import LogNorm

    plt = _plt()
    names = sorted(grads)
    data = np.array([grads[n] for n in names], dtype=float)  # (M, T)
    t = data.shape[1]
    if t > bins:  # average into `bins` columns; a NaN or 0 anywhere in a bin stays visible
        edges = np.linspace(0, t, bins + 1).astype(int)
        cols = []
        for a, b in zip(edges[:-1], edges[1:]):
            block = data[:, a:b]
            col = np.nanmean(np.where(np.isfinite(block), block, np.nan), axis=1) \
                if np.isfinite(block).any() else np.full(len(names), np.nan)
            col = np.where(~np.isfinite(block).all(axis=1), np.nan, col)
            col = np.where((block == 0).any(axis=1), 0.0, col)
            cols.append(col)
        data = np.stack(cols, axis=1)
        xs = [steps.x[min(a, t - 1)] for a in edges]
    else:
        xs = list(steps.x) + [steps.x[-1] + 1 if steps.x else 1]
    xs = np.asarray(xs, dtype=float)
    by_row = not np.isfinite(xs).all()  # a step that is no finite number: place columns by row
    if by_row:
        xs = np.arange(xs.size, dtype=float)
    masked = np.ma.masked_where(~np.isfinite(data) | (data <= 0), data)
    positive = data[np.isfinite(data) & (data > 0)]
    fig, ax = plt.subplots(figsize=(_SIZE[0], 0.45 * len(names) + 1.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#ff00aa")
    norm = LogNorm(vmin=positive.min(), vmax=max(positive.max(), positive.min() * 1.0001)) \
        if positive.size else None
    mesh = ax.pcolormesh(xs, np.arange(len(names) + 1), masked, cmap=cmap, norm=norm,
                         shading="flat")
    ax.set_yticks(np.arange(len(names)) + 0.5, [_text(n) for n in names], fontsize=8)
    ax.set_xlabel("row (some steps are not finite numbers)" if by_row else "step")
    ax.set_title("gradient norm per module (log colour; magenta = 0 or non-finite)", loc="left")
    fig.colorbar(mesh, ax=ax, pad=0.01)
    return _png(fig)


def ratio_figure(steps: PlotColumns) -> bytes:
    """Update-to-weight ratio ‖Δθ‖/‖θ‖ per module; ~1e-3 per step is the usual range."""
    ratios = steps.group("ratio/")
    if not len(steps) or not ratios:
        return _empty("update / parameter norm", "no update_norm / param_norm logged")
    plt = _plt()
    fig, ax = plt.subplots(figsize=_SIZE)
    vals = [v for c in ratios.values() for v in _finite(c)]
    positive = [v for v in vals if v > 0]
    frozen = []
    for name, col in sorted(ratios.items()):
        line = ax.plot(steps.x, [v if v > 0 or not positive else math.nan for v in col], lw=1.0,
                       label=_text(name))[0]
        zeros = [x for x, v in zip(steps.x, col) if v == 0]
        if zeros and positive:  # log axis: a frozen module is drawn on the floor, in its colour
            frozen.append(name)
            ax.scatter(zeros, [0.0] * len(zeros), transform=ax.get_xaxis_transform(), marker="|",
                       color=line.get_color(), s=30, clip_on=False)
    ax.axhspan(1e-4, 1e-2, color="green", alpha=0.08, label="typical 1e-4..1e-2")
    if positive:
        ax.set_yscale("log")
    note = _text(f"  (exactly 0, drawn on the floor: {', '.join(frozen)})") if frozen else ""
    ax.set_title("update ratio ‖Δθ‖/‖θ‖ per module" + note, loc="left")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def lr_figure(steps: PlotColumns) -> bytes:
    """Learning rate per parameter group (a warm-up from 0 shows as a missing start)."""
    lrs = steps.group("lr/")
    if not len(steps) or not lrs:
        return _empty("learning rate", "no lr logged")
    plt = _plt()
    fig, ax = plt.subplots(figsize=_SIZE)
    for name, col in sorted(lrs.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        ax.plot(steps.x, col, lw=1.2, label=f"group {name}")
        zero = [x for x, v in zip(steps.x, col) if v == 0]
        if zero:
            ax.scatter(zero, [0] * len(zero), color="red", s=6, label=f"group {name} lr = 0")
    _log_if_positive(ax, list(lrs.values()))
    ax.set_xlabel("step")
    ax.set_title("learning rate per param group", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def _plottable(x: Any) -> bool:
    """A step a figure can place: a finite number a float can hold (a step of 10**400 in a
    hostile file is data, not a coordinate)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def events_figure(events: Sequence[Mapping], last_step: float | None) -> bytes:
    """Health events on a step timeline, one row per severity, labelled by code."""
    placed = [e for e in events if _plottable(e.get("step"))]
    if not placed:
        return _empty("health events", "no health events" if not events else "events carry no step")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(_SIZE[0], 2.6))
    labelled: set = set()
    stacked: dict = {}
    span = max(max(e["step"] for e in placed), last_step if _plottable(last_step) else 0, 1)
    for e in placed:
        sev = str(e.get("severity", "info"))
        y = SEVERITY_LEVEL.get(sev, 0)
        end = e.get("last_step")
        if _plottable(end) and end > e["step"]:  # a folded repeat: its whole span
            ax.plot([e["step"], end], [y, y], color=SEVERITY_COLOURS.get(sev, "grey"), lw=4,
                    alpha=0.35, solid_capstyle="butt")
        ax.scatter([e["step"]], [y], color=SEVERITY_COLOURS.get(sev, "grey"), s=40, zorder=3,
                   label=sev if sev not in labelled else None, edgecolor="black", lw=0.4)
        labelled.add(sev)
        key = (e.get("code"), y)
        if key not in labelled:  # name each code once per row, at its first occurrence
            labelled.add(key)
            nearby = stacked.setdefault((y, round(e["step"] / span, 1)), 0)  # labels that would overlap
            stacked[(y, round(e["step"] / span, 1))] += 1
            ax.annotate(_text(e.get("code")), (e["step"], y), textcoords="offset points",
                        xytext=(4, 5 + 8 * nearby), fontsize=7)
    ax.set_yticks(list(SEVERITY_LEVEL.values()), list(SEVERITY_LEVEL))
    ax.set_ylim(-0.6, 3.9)
    right = max([e["step"] for e in placed] + ([last_step] if last_step else []))
    ax.set_xlim(-0.02 * max(right, 1), right * 1.05 + 1)
    ax.set_xlabel("step")
    ax.set_title("health events", loc="left")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)

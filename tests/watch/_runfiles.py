"""Fake run dirs for the watch/report tests, written per docs/run-dir.md by hand.

These write JSON with the standard library only (not the project's writers), so a
reader bug cannot be hidden by a matching writer bug.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

FAULTS = (None, "nan", "zero", "constant")


def step_line(i: int, fault: str | None = None, *, n_terms: int = 2) -> dict:
    """Step `i` of a run whose loss decays like 2 e^(-i/50) + 0.1, or breaks as `fault` says."""
    base = 2.0 * math.exp(-i / 50) + 0.1
    terms = {"cov": base, "subspace": 0.5 * base}
    weights = {"cov": 1.0, "subspace": 0.1}
    if fault == "nan" and i >= 30:
        terms["cov"] = math.nan
    elif fault == "zero":
        weights["cov"] = 0.0
    elif fault == "constant":
        terms = {"cov": 0.7, "subspace": 0.7}
    loss = sum(weights[k] * terms[k] for k in terms)
    if fault == "zero":
        loss = 0.0  # docs/failure-catalogue.md row 1: the primary weight never reached the loss
    return {
        "schema": 1, "kind": "step", "step": i, "epoch": i // 50, "time": 1.7e9 + 0.1 * i,
        "rank": 0, "loss": loss, "terms": terms, "weights": weights, "primary": "cov",
        "lr": [1e-3], "grad_norm": {"_total": 1.0, "trunk": 0.8, "head": 0.6},
        "update_norm": {"trunk": 1e-3, "head": 1e-3}, "param_norm": {"trunk": 2.0, "head": 1.0},
        "steps_taken": i + 1, "batches_seen": i + 1, "skipped": False,
    }


def eval_line(i: int, loss: float) -> dict:
    return {"schema": 1, "kind": "eval", "step": i, "epoch": i // 50, "time": 1.7e9 + 0.1 * i,
            "rank": 0, "loss": loss, "terms": {}, "metrics": {"rmse_phi_deg": 2.0}}


def dumps(obj: dict) -> str:
    return json.dumps(obj)  # NaN -> the NaN token, as docs/run-dir.md says


def write_run(run_dir: Path, n: int = 120, fault: str | None = None, *, evals: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for i in range(n):
            line = step_line(i, fault)
            fh.write(dumps(line) + "\n")
            if evals and i % 40 == 39:
                val = 0.7 if fault == "constant" else 1.1 * line["loss"] * (1 - i / (2 * n))
                fh.write(dumps(eval_line(i, val)) + "\n")
    return run_dir


def write_health(run_dir: Path, events: list[dict]) -> None:
    with open(run_dir / "health.jsonl", "a") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")


def health_event(code: str, severity: str, step: int | None, where: str | None = None, **kw) -> dict:
    return {"schema": 1, "code": code, "severity": severity, "step": step, "epoch": 0,
            "time": 1.7e9, "rank": 0, "title": kw.pop("title", code), "detail": "",
            "evidence": {}, "where": where, "hint": kw.pop("hint", ""),
            "count": kw.pop("count", 1), "source": "monitor", **kw}


def append(path: os.PathLike, text: str | bytes) -> None:
    mode = "ab" if isinstance(text, bytes) else "a"
    with open(path, mode) as fh:
        fh.write(text)
        fh.flush()

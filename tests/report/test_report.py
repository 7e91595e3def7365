"""`healthcheck report`: a self-contained HTML page plus PNGs, robust to NaN and empty runs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest
from _runfiles import health_event, write_health
from click.testing import CliRunner

from healthcheck.cli import cli
from healthcheck.report.page import FIGURES, collect

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def report(run, *extra):
    res = CliRunner().invoke(cli, ["report", str(run), *map(str, extra)])
    assert res.exit_code == 0, res.output
    return res


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_report_is_self_contained_html_with_pngs_alongside(run_factory):
    run = run_factory(fault="nan")
    (run / "config.json").write_text(json.dumps({
        "schema": 1, "config_hash": "abc123",
        "config": {"loss": {"weights": {"cov": 1.0, "subspace": 0.1}}},
        "sources": {"loss.weights.cov": "default", "loss.weights.subspace": "cli"},
        "weights_history": [{"term": "subspace", "value": 0.1, "source": "cli", "epoch": 0, "step": 0},
                            {"term": "subspace", "value": 0.25, "source": "schedule", "epoch": 3,
                             "step": None}],
    }))
    (run / "gate.json").write_text(json.dumps({
        "passed": False, "config_hash": "abc123",
        "checks": [{"name": "overfit_one_batch", "passed": False, "measured": {"loss_ratio": 0.93},
                    "hint": "the loss did not fall on one batch"}]}))
    report(run)
    html = (run / "report.html").read_text()
    pngs = embedded_pngs(html)
    assert len(pngs) == len(FIGURES) and all(p.startswith(PNG_MAGIC) for p in pngs)
    for name in FIGURES:
        assert (run / "report" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
    # nothing is fetched from elsewhere: no external scripts, styles or images
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "loss.nonfinite" in html and "overfit_one_batch" in html and "FAIL" in html
    assert "cli" in html and "abc123" in html and "weights history" in html and "schedule" in html


def test_report_of_an_empty_run(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    out = tmp_path / "elsewhere" / "r.html"
    report(run, "--out", out, "--png-dir", tmp_path / "pngs")
    html = out.read_text()
    assert len(embedded_pngs(html)) == len(FIGURES)
    assert "watch.no_steps" in html and "No gate.json" in html
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == sorted(f"{n}.png" for n in FIGURES)


def test_report_of_a_missing_dir_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_collect_keeps_nan_steps_and_thins_long_runs(run_factory):
    run = run_factory(n=3000, fault="nan", evals=False)
    data = collect(str(run), max_points=100)
    steps = data.series.steps
    assert len(steps) < 300  # thinned, memory bounded
    xs = steps.x
    assert xs == sorted(xs) and xs[0] == 0
    loss = steps.cols["loss"]
    assert any(v != v for v in loss)  # NaN points survive thinning
    assert data.weights.first == {"cov": 1.0, "subspace": 0.1} and data.weights.changes == {}


def test_report_events_include_the_monitors(run_factory):
    run = run_factory()
    write_health(run, [health_event("grad.none", "error", 4, "head.0", title="head.0 got no gradient")])
    report(run)
    html = (run / "report.html").read_text()
    assert "grad.none" in html and "head.0 got no gradient" in html


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not on PATH")
def test_report_renders_in_a_headless_browser(run_factory, tmp_path):
    run = run_factory(fault="zero")
    report(run)
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-component-update", "--disable-sync",
           "--window-size=1200,2400", f"--screenshot={shot}", (run / "report.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.exists() and shot.read_bytes().startswith(PNG_MAGIC), proc.stderr[-2000:]
    dom = subprocess.run(cmd[:8] + ["--dump-dom", (run / "report.html").as_uri()],
                         capture_output=True, timeout=120, text=True).stdout
    assert "weights.primary_zero" in dom and dom.count("<img") == len(FIGURES)


def test_report_honours_silenced_codes(run_factory):
    run = run_factory(fault="nan")
    res = CliRunner().invoke(cli, ["report", str(run)], env={"HEALTHCHECK_SILENCE": "loss.nonfinite"})
    assert res.exit_code == 0
    assert "loss.nonfinite" not in (run / "report.html").read_text()

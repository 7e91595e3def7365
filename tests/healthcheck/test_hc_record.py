"""StepRecord and its metrics.jsonl file: what a step looks like as plain data."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from healthcheck.record import MetricsWriter, StepRecord, read_records


def test_minimal_metrics_line_gives_not_measured_fields():
    rec = StepRecord.from_metrics_line({"kind": "step", "step": 3})
    assert rec.step == 3 and rec.loss is None and rec.grad_norm == {} and rec.amp is None
    assert rec.steps_taken is None and rec.skipped is None and rec.lr == []


def test_metrics_line_round_trip_keeps_unknown_keys():
    line = {"schema": 1, "kind": "step", "step": 4, "epoch": 0, "time": 10.0, "rank": 0,
            "loss": 0.5, "terms": {"a": 0.4}, "weights": {"a": 1.0}, "primary": "a", "lr": 0.001,
            "grad_norm": {"enc": 1.0, "_total": 1.0}, "amp": {"scale": 1024.0, "found_inf": False},
            "steps_taken": 5, "batches_seen": 5, "skipped": False, "future_field": [1, 2]}
    rec = StepRecord.from_metrics_line(line)
    assert rec.lr == [0.001] and rec.extra == {"future_field": [1, 2]}
    out = rec.to_metrics_line()
    assert out["future_field"] == [1, 2] and out["lr"] == [0.001] and out["amp"]["found_inf"] is False
    assert StepRecord.from_metrics_line(json.loads(json.dumps(out))) == rec


def test_to_metrics_line_omits_what_was_not_measured():
    out = StepRecord(kind="eval", step=10, epoch=1, time=1.0, loss=0.3).to_metrics_line()
    assert set(out) == {"schema", "kind", "step", "epoch", "time", "rank", "loss"}


def test_bad_kind_is_an_error():
    with pytest.raises(ValueError, match="kind='batch'"):
        StepRecord(kind="batch")


def test_metrics_writer_and_reader_with_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        for i in range(3):
            w.write(StepRecord(step=i, loss=float(i), time=0.0))
        w.write({"schema": 1, "kind": "eval", "step": 3, "epoch": 0, "time": 0.0, "rank": 0, "loss": math.nan})
    with open(path, "a") as fh:
        fh.write('{"kind": "step", "step": 4, "lo')
    recs = read_records(path)
    assert [r.step for r in recs] == [0, 1, 2, 3] and math.isnan(recs[3].loss)



def test_importing_healthcheck_does_not_import_torch_or_services():
    code = ("import sys, healthcheck; healthcheck.Monitor; healthcheck.Policy; healthcheck.StepRecord; "
            "healthcheck.default_detectors(); healthcheck.judge_records([]);"
            "bad = [m for m in ('torch', 'wandb', 'optuna', 'matplotlib', 'lightning') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))

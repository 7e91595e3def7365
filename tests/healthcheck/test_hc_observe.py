from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from healthcheck.live import LiveView, ModuleNorms, measure, owner_module, top_module
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


def test_module_names():
    assert top_module("encoder.layers.0.weight") == "encoder" and top_module("scale") == "_root"
    assert owner_module("head.0.weight") == "head.0" and owner_module("scale") == "_root"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.head(self.encoder(x)) * self.scale


def _independent_norm(params):
    return torch.cat([p.reshape(-1) for p in params]).double().norm().item()


def test_module_norms_match_an_independent_computation():
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    norms = ModuleNorms(net)
    net(torch.randn(8, 4)).pow(2).sum().backward()
    grads = norms.grad_norms()
    assert set(grads) == {"encoder", "head", "_root", "_total"}  # frozen module not tracked
    assert grads["encoder"] == pytest.approx(_independent_norm([p.grad for p in net.encoder.parameters()]), rel=1e-6)
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert grads["_total"] == pytest.approx(_independent_norm([p.grad for p in trainable]), rel=1e-6)
    before = [p.detach().clone() for p in net.head.parameters()]
    norms.snapshot()
    opt.step()
    updates, params = norms.after_step()
    expected = _independent_norm([b - p.detach() for b, p in zip(before, net.head.parameters())])
    assert updates["head"] == pytest.approx(expected, rel=1e-5) and updates["head"] > 0
    assert params["head"] == pytest.approx(_independent_norm(list(net.head.parameters())), rel=1e-6)
    assert "_total" not in updates
    # no snapshot since the last after_step: no update norms, parameters still measured
    updates2, params2 = norms.after_step()
    assert updates2 == {} and params2["head"] == pytest.approx(params["head"])


def test_module_without_gradient_reads_zero():
    net = Net()
    net.encoder(torch.randn(2, 4)).sum().backward()  # head and scale get no grad
    g = measure(net)
    assert g["head"] == 0.0 and g["_root"] == 0.0 and g["encoder"] > 0


def test_live_view_lists_trainable_parameters_and_optimizer_membership():
    net = Net()
    opt = torch.optim.SGD(net.encoder.parameters(), lr=0.1)
    live = LiveView(net, opt)
    names = [n for n, _ in live.named_params]
    assert "frozen.weight" not in names and "scale" in names
    held = live.optimizer_param_ids()
    assert id(net.encoder[0].weight) in held and id(net.head.weight) not in held
    stats = live.param_grad_stats()
    assert not any(stats.has_grad) and all(math.isnan(v) for v in stats.norms)


def test_importing_healthcheck_does_not_import_torch_or_services():
    code = ("import sys, healthcheck; healthcheck.Monitor; healthcheck.Policy; healthcheck.StepRecord; "
            "healthcheck.default_detectors(); healthcheck.judge_records([]);"
            "bad = [m for m in ('torch', 'wandb', 'optuna', 'matplotlib', 'lightning') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))

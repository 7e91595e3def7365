"""One cause, one event: a model whose BatchNorm layers are all left out of the optimizer
gets one ``param.not_in_optimizer`` event listing every such parameter, emitted again only
when that list changes."""

from __future__ import annotations

import torch
from torch import nn

import healthcheck
from healthcheck.events import read_events

LAYERS = 6


def _model():
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()) for _ in range(LAYERS)]
    return nn.Sequential(*blocks, nn.Linear(8, 1))


def _train(run_dir, steps=30, add_group_at=None):
    model = _model()
    linear = [p for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()]
    opt = torch.optim.SGD(linear, lr=0.05)  # every BatchNorm weight and bias left out
    X = torch.randn(256, 8)
    Y = X.sum(1, keepdim=True)
    with healthcheck.TrainingHealth(model, opt, run_dir, console=False) as health:
        for i in range(steps):
            if i == add_group_at:  # half of the BatchNorm layers join the optimizer
                norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
                opt.add_param_group({"params": [p for m in norms[: LAYERS // 2] for p in m.parameters()]})
            x, y = X[(i % 8) * 32:(i % 8 + 1) * 32], Y[(i % 8) * 32:(i % 8 + 1) * 32]
            opt.zero_grad()
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            health.after_backward(loss)
            opt.step()
            health.after_step()
    return health.summary(), read_events(run_dir / "health.jsonl")


def test_batchnorm_left_out_is_one_event_listing_every_parameter(tmp_path):
    summary, events = _train(tmp_path)
    found = [e for e in events if e.code == "param.not_in_optimizer"]
    assert len(found) == 1 and summary["by_code"]["param.not_in_optimizer"] == 1
    event = found[0]
    assert event.step == 0 and event.where == "model"
    assert event.evidence["params"] == 2 * LAYERS and event.evidence["modules"] == LAYERS
    assert event.evidence["numel"] == 2 * 8 * LAYERS
    assert all(f"{k}.1" in event.detail for k in range(LAYERS))


def test_the_event_comes_again_only_when_the_list_changes(tmp_path):
    _, events = _train(tmp_path, add_group_at=10)
    found = [e for e in events if e.code == "param.not_in_optimizer"]
    assert [(e.step, e.evidence["params"]) for e in found] == [(0, 2 * LAYERS), (10, LAYERS)]

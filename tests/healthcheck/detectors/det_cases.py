"""Shared fixtures of the detector tests: healthy records, record builders, a tiny live
model, and the fault-table tests each family file instantiates for its own detectors."""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hc_fakes import codes_where, healthy_epoch, healthy_eval, healthy_step, run
from torch import nn

from healthcheck.codes import CODES
from healthcheck.live import LiveView

HEALTHY_STEPS = [healthy_step(i) for i in range(200)]
HEALTHY_EVALS = [healthy_eval(e) for e in range(25)]
HEALTHY = HEALTHY_STEPS + [r for e in range(25) for r in (healthy_epoch(e), healthy_eval(e))]
SOURCES = {"mse": "config", "reg": "config"}


def steps(n, start=0, **over):
    return [healthy_step(i, **over) for i in range(start, start + n)]


def with_grad(rec, **norms):
    g = {**rec.grad_norm, **norms}
    return replace(rec, grad_norm=g)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x, mode="ok"):
        h = self.encoder(x)
        if mode == "detached_head":
            return self.head(h).detach() + h.sum(dim=1, keepdim=True)
        if mode == "clamped":
            return torch.clamp(self.head(h), min=1e6) + h.sum(dim=1, keepdim=True)
        return self.head(h)


def live_steps(det, mode, n=6, optimizer_params=None):
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters() if optimizer_params is None else optimizer_params(net), lr=0.1)
    live = LiveView(net, opt)
    state, events = det.new_state(), []
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        net(torch.randn(5, 4), mode).pow(2).mean().backward()
        live.begin("after_backward", i)
        events.extend(det.check(healthy_step(i), state, live))
    return events


def fault_tests(faults):
    """The two tests of a family's fault table ``{name: (factory, records, {(code, where)})}``:
    each fault fires with its code and place, and each detector stays silent on a healthy run."""

    @pytest.mark.parametrize("name", sorted(faults))
    def test_fault_fires_with_code_and_place(name):
        factory, records, expected = faults[name]
        events = run(factory(), records)
        assert expected <= codes_where(events), [e.line() for e in events]
        for e in events:
            assert e.code in factory().codes
            assert e.hint == CODES[e.code].fix and e.title

    @pytest.mark.parametrize("name", sorted(faults))
    def test_healthy_run_is_silent(name):
        factory, _, _ = faults[name]
        assert run(factory(), HEALTHY) == []

    return test_fault_fires_with_code_and_place, test_healthy_run_is_silent


def all_faults() -> dict:
    """Every family file's fault table, merged."""
    out = {}
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        out.update(getattr(importlib.import_module(path.stem), "FAULTS", {}))
    return out

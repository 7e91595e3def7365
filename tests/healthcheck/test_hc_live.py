"""LiveView and the fused torch measurement of gradient and update norms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from healthcheck.live import LiveView, ModuleNorms, measure, owner_module, top_module


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
    # one norm per module that owns parameters; the frozen module is not tracked
    assert set(grads) == {"encoder.0", "encoder.2", "head", "_root", "_total"}
    assert grads["encoder.2"] == pytest.approx(_independent_norm([p.grad for p in net.encoder[2].parameters()]),
                                               rel=1e-6)
    top = ModuleNorms(net, max_groups=3).grad_norms()  # cut to the top level: encoder, head, _root
    assert set(top) == {"encoder", "head", "_root", "_total"}
    assert top["encoder"] == pytest.approx(_independent_norm([p.grad for p in net.encoder.parameters()]), rel=1e-6)
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
    assert g["head"] == 0.0 and g["_root"] == 0.0 and g["encoder.0"] > 0 and g["encoder.2"] > 0


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

"""Detectors on whether a gradient reaches every parameter
(healthcheck/detectors/grad_flow.py): each injected fault fires with its code and place, a
healthy run stays silent, and the finer points of each rule hold."""

from __future__ import annotations

import pytest
import torch
from det_cases import Net, fault_tests, live_steps, steps, with_grad
from hc_fakes import codes_where, healthy_step
from torch import nn

import healthcheck.detectors as D
from healthcheck.events import Severity
from healthcheck.live import LiveView

# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "ZeroGrad": (D.ZeroGrad, [with_grad(r, head=0.0) for r in steps(6)], {("grad.zero", "head")}),
}
test_fault_fires_with_code_and_place, test_healthy_run_is_silent = fault_tests(FAULTS)


def test_none_grad_names_the_detached_module():
    events = live_steps(D.NoneGrad(), "detached_head")
    assert codes_where(events) == {("grad.none", "head")}
    assert "head.weight" in events[0].detail and "head.bias" in events[0].detail
    assert live_steps(D.NoneGrad(), "ok") == []


def test_zero_grad_live_names_the_clamped_module():
    events = live_steps(D.ZeroGrad(), "clamped")
    assert codes_where(events) == {("grad.zero", "head")}
    assert live_steps(D.ZeroGrad(), "ok") == []


def test_live_grad_stats_are_computed_once_per_phase():
    net = Net()
    net(torch.randn(3, 4)).sum().backward()
    live = LiveView(net, None)
    live.begin("after_backward", 0)
    first = live.param_grad_stats()
    assert live.param_grad_stats() is first
    live.begin("after_step", 0)
    assert live.param_grad_stats() is not first
    expected = [p.grad.norm().item() for _, p in net.named_parameters()]
    assert list(first.norms) == pytest.approx(expected, rel=1e-6)


class Mlp(nn.Module):
    """Linear -> ReLU -> Linear; ``shift`` moves chosen hidden pre-activations far below 0."""

    def __init__(self, vocab=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, 4) if vocab else None
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)
        self.shift = torch.zeros(8)

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)
        return self.out(torch.relu(self.hidden(x) - self.shift))


def dead_unit_events(net, inputs, n=4, loss=None):
    """DeadUnits over n backward passes; ``loss(i)`` is the loss the records report."""
    det = D.DeadUnits()
    live = LiveView(net, None)
    state, events = det.new_state(), []
    for i in range(n):
        net.zero_grad(set_to_none=True)
        net(inputs()).pow(2).mean().backward()
        live.begin("after_backward", i)
        record = healthy_step(i) if loss is None else healthy_step(i, loss=loss(i))
        events.extend(det.check(record, state, live))
    return events


def test_dead_units_in_a_run_that_learns_are_a_warning():
    torch.manual_seed(0)
    net = Mlp()
    net.shift[:5] = 100.0
    events = dead_unit_events(net, lambda: torch.randn(16, 4), n=80, loss=lambda i: 2.0 / (1 + 0.2 * i))
    assert events and {e.severity for e in events} == {Severity.WARNING}
    assert events[-1].evidence["loss_factor"] > 1.5 and "still learns" in events[-1].detail


def test_dead_units_in_a_run_whose_loss_is_flat_become_an_error_once_that_is_known():
    torch.manual_seed(0)
    net = Mlp()
    net.shift[:5] = 100.0
    flat = dead_unit_events(net, lambda: torch.randn(16, 4), n=30, loss=lambda i: 1.0 + 0.01 * (i % 3))
    grades = {e.step: e.severity for e in flat}
    assert grades[2] == Severity.WARNING and grades[18] == Severity.WARNING  # not known yet
    assert grades[19] == Severity.ERROR and "not improving" in flat[-1].detail  # 20 losses, none lower
    # a loss that moved a little by step 20 but not enough by step 50: an error from then on
    slow = dead_unit_events(net, lambda: torch.randn(16, 4), n=60, loss=lambda i: 1.0 / (1 + 0.01 * i))
    grades = {e.step: e.severity for e in slow}
    assert grades[19] == Severity.WARNING and grades[48] == Severity.WARNING and grades[49] == Severity.ERROR


def test_dead_units_names_the_layer_whose_units_died():
    torch.manual_seed(0)
    net = Mlp()
    net.shift[:5] = 100.0  # 5 of 8 hidden units never activate: their rows get no gradient
    events = dead_unit_events(net, lambda: torch.randn(16, 4))
    assert codes_where(events) == {("grad.dead_units", "hidden")}
    assert [e.step for e in events] == [2, 3]  # the third step in a row
    assert events[0].evidence["fraction"] == pytest.approx(5 / 8) and events[0].evidence["rows"] == 8
    net.shift[:5] = 0.0
    net.shift[:3] = 100.0  # 3 of 8 dead: below half
    assert dead_unit_events(net, lambda: torch.randn(16, 4)) == []


class NoBiasMlp(Mlp):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 8, bias=False)


def test_dead_units_reads_weight_rows_where_the_layer_has_no_bias():
    torch.manual_seed(0)
    net = NoBiasMlp()
    net.shift[:6] = 100.0
    events = dead_unit_events(net, lambda: torch.randn(16, 4))
    assert codes_where(events) == {("grad.dead_units", "hidden")}
    assert events[0].evidence["fraction"] == pytest.approx(6 / 8)


def test_dead_units_ignores_a_layer_whose_input_is_zero_but_units_are_alive():
    # every row of out.weight is 0 (its input is 0), yet out's units pass gradient back
    torch.manual_seed(0)
    net = Mlp()
    net.shift[:] = 100.0  # all hidden units dead: hidden fires, out (zero input) must not
    events = dead_unit_events(net, lambda: torch.randn(16, 4))
    assert codes_where(events) == {("grad.dead_units", "hidden")}


def test_dead_units_healthy_net_and_embedding_rows_are_silent():
    torch.manual_seed(0)
    assert dead_unit_events(Mlp(), lambda: torch.randn(16, 4)) == []
    # a batch touches 2 of 50 tokens: 96 % of the table's rows get no gradient, by design
    net = Mlp(vocab=50)
    assert dead_unit_events(net, lambda: torch.tensor([3, 7] * 8)) == []

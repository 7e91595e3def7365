"""Detectors on optimizer settings (healthcheck/detectors/optimizer.py): the finer points of
each rule hold."""

from __future__ import annotations

import pytest
import torch
from det_cases import Net
from hc_fakes import codes_where, healthy_step

import healthcheck.detectors as D
from healthcheck.live import LiveView


def weight_decay_events(optimizer, scheduler=None):
    net = Net()
    live = LiveView(net, optimizer(net))
    if scheduler is not None:
        scheduler(live.optimizer)
    det = D.WeightDecay()
    return list(det.check(healthy_step(0), det.new_state(), live))


def test_weight_decay_times_lr_too_large_fires_on_the_group():
    events = weight_decay_events(lambda net: torch.optim.AdamW(
        [{"params": net.encoder.parameters(), "weight_decay": 200.0},
         {"params": net.head.parameters(), "weight_decay": 0.0}], lr=1e-3))
    assert codes_where(events) == {("optim.weight_decay", "group0")}
    assert events[0].evidence["product"] == pytest.approx(0.2)
    # a warm-up from 1 % of the peak lr does not hide a product of 1 at the peak
    warm = weight_decay_events(lambda net: torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e3),
                               lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.01))
    assert codes_where(warm) == {("optim.weight_decay", "group0")} and warm[0].evidence["lr"] == pytest.approx(1e-3)


def test_weight_decay_usual_settings_are_silent():
    assert weight_decay_events(lambda net: torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)) == []
    assert weight_decay_events(lambda net: torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=5e-4)) == []

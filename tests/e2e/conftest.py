"""Faults injected into a real `ris-model train` run, for the end-to-end tests.

`ris-model train` gets its callbacks from the plugins it loads (the health monitor among
them); these fixtures add one more, so the fault acts inside the very loop a user runs,
with or without the monitor (`--no-health` disables only the monitor's plugin).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

import ris_model.training.plugins
from healthcheck.ris.faults import REGISTRY
from ris_model.training.callbacks import Callback


class DropPrimaryWeight(Callback):
    """Writes 0 into the live loss's primary weight before every batch, as the origin
    pipeline's schedule did after validation: the config said cov = 1 all along."""

    def on_batch_start(self, trainer, batch_index):
        w = trainer.loss_fn.weights
        object.__setattr__(trainer.loss_fn, "weights", dataclasses.replace(w, cov=0.0))


class ApplyCatalogueFault(Callback):
    """Applies a fault of the detection benchmark's catalogue to the built trainer."""

    def __init__(self, name: str) -> None:
        self.fault = next(f for f in REGISTRY if f.name == name)

    def on_fit_start(self, trainer):
        self.fault.apply(trainer)


def _add_plugin_callback(monkeypatch, make: Callable[[], Callback]) -> None:
    real = ris_model.training.plugins.plugin_callbacks
    monkeypatch.setattr(ris_model.training.plugins, "plugin_callbacks",
                        lambda options, disabled=frozenset(): real(options, disabled=disabled) + [make()])


@pytest.fixture
def primary_dropped_at_run_time(monkeypatch):
    """`ris-model train` gets DropPrimaryWeight next to the plugins it loads (the monitor)."""
    _add_plugin_callback(monkeypatch, DropPrimaryWeight)


@pytest.fixture
def catalogue_fault(monkeypatch):
    """`catalogue_fault("lr_zero")`: the next `ris-model train` runs with that fault."""
    return lambda name: _add_plugin_callback(monkeypatch, lambda: ApplyCatalogueFault(name))

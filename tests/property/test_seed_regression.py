"""The seed report, as two regressions.

1. The broken constructor call passed only the auxiliary weights and relied on a
   default for the primary one. Built that way today, the loss is refused, and the
   message names the missing primary weight.
2. The weight that reached the loss was 0 anyway, because something (a schedule step,
   an HPO apply) wrote 0 into the live loss after validation. The health monitor must
   stop the Trainer at its first step, with ``weights.primary_zero`` naming ``cov``,
   before any optimizer step changes a parameter.
"""

from __future__ import annotations

import json

import pytest
import torch

from healthcheck.ris.trainer_callback import RisTrainerHealth
from ris_model.batches import build_scenes
from ris_model.config import ConfigError, LossWeights, load_config
from ris_model.loss import HybridLoss
from ris_model.training.callbacks import Callback
from ris_model.training.stop import StopReason
from ris_model.training.train import Trainer

pytestmark = pytest.mark.property

# What the origin pipeline passed: subspace alignment, peak contrast, and a small third term.
SEED_AUX = {"subspace": 0.05, "peak": 0.1, "ortho": 0.03}


def test_a_loss_built_from_auxiliary_weights_only_is_refused_naming_the_primary(tiny):
    with pytest.raises(ConfigError, match=r"primary loss term 'cov'"):
        HybridLoss(SEED_AUX, system=tiny.system)
    with pytest.raises(TypeError, match=r"'cov'"):  # no default to fall back to
        LossWeights(**SEED_AUX)


# ------------------------------------------------------------- runtime overwrite
def _overwrite_in_place(trainer):
    """A schedule step mutating the frozen weights object the loss holds."""
    object.__setattr__(trainer.loss_fn.weights, "cov", 0.0)


def _swap_unvalidated(trainer):
    """An HPO apply handing the loss weights built without their validation."""
    bad = object.__new__(LossWeights)
    for term, value in {**trainer.loss_fn.weights.as_dict(), "cov": 0.0}.items():
        object.__setattr__(bad, term, value)
    trainer.loss_fn.set_weights(bad)


class ZeroPrimaryAtStart(Callback):
    """Writes 0 into the live loss just before the first forward pass, after every check
    of the config and of HybridLoss has passed; remembers the parameters as they were."""

    def __init__(self, write) -> None:
        self.write = write
        self.before: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer) -> None:
        self.before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_batch_start(self, trainer, batch_index) -> None:
        if trainer.state.batches_seen == 0:
            self.write(trainer)


@pytest.fixture(scope="module")
def run_cfg():
    cfg = load_config("tiny", overrides=["model.width=16", "model.depth=1", "train.epochs=1",
                                         "train.batch_size=16", "train.train_scenes=32", "train.val_scenes=16"])
    return cfg, build_scenes(cfg.system, 32, seed=3)


def _fit(cfg, data, run_dir, callbacks):
    trainer = Trainer(cfg, run_dir, device="cpu", callbacks=callbacks, train_scenes=data,
                      val_scenes=data.take(slice(0, 16)))
    return trainer, trainer.fit()


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("write", [_overwrite_in_place, _swap_unvalidated], ids=["setattr", "set_weights"])
def test_a_primary_weight_zeroed_at_run_time_stops_the_trainer_before_any_step(tmp_path, run_cfg, write):
    cfg, data = run_cfg
    fault = ZeroPrimaryAtStart(write)
    health = RisTrainerHealth.build(tmp_path)
    trainer, result = _fit(cfg, data, tmp_path, [fault, health])

    assert result.stop_reason is StopReason.HEALTH and "cov" in result.stop_message
    assert result.steps_taken == 0
    events = _lines(tmp_path / "health.jsonl")
    fatal = [e for e in events if e["severity"] in ("error", "critical")]
    assert fatal, events
    assert fatal[0]["code"] == "weights.primary_zero" and fatal[0]["where"] == "cov"
    assert fatal[0]["step"] in (0, 1)
    steps = [l for l in _lines(tmp_path / "metrics.jsonl") if l["kind"] == "step"]
    assert steps and steps[0]["weights"]["cov"] == 0.0  # the fault is what the step really used
    assert all(l["steps_taken"] == 0 for l in steps)
    # Independent of the trainer's counters: no parameter moved (AdamW's decay alone
    # would move every matrix, even with zero gradients).
    after = trainer.model.state_dict()
    assert all(torch.equal(fault.before[k], after[k]) for k in fault.before)


def test_without_the_overwrite_the_same_run_trains(tmp_path, run_cfg):
    cfg, data = run_cfg
    fault = ZeroPrimaryAtStart(lambda trainer: None)
    trainer, result = _fit(cfg, data, tmp_path, [fault, RisTrainerHealth.build(tmp_path)])
    assert result.stop_reason is None and result.steps_taken > 0
    codes = {e["code"] for e in _lines(tmp_path / "health.jsonl")}
    assert "weights.primary_zero" not in codes
    after = trainer.model.state_dict()
    assert not all(torch.equal(fault.before[k], after[k]) for k in fault.before)

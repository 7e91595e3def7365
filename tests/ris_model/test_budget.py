from types import SimpleNamespace

import pytest

from ris_model.batches import build_scenes
from ris_model.config import load_config
from ris_model.training.budget import CpuBudget
from ris_model.training.stop import StopReason
from ris_model.training.train import Trainer


class FakeClock:
    def __init__(self, readings):
        self.readings = list(readings)

    def __call__(self):
        return self.readings.pop(0)


class StopRecorder:
    """What CpuBudget reads of a Trainer (the epoch it is in, the epochs planned), and its stop requests."""

    def __init__(self, epochs: int = 10):
        self.reasons = []
        self.stop_reasons = []
        self.state = SimpleNamespace(epoch=0)
        self.cfg = SimpleNamespace(train=SimpleNamespace(epochs=epochs))

    def request_stop(self, message, reason):
        self.reasons.append(message)
        self.stop_reasons.append(reason)

    def validated(self, budget):
        budget.on_validation_end(self, {})
        self.state.epoch += 1


def test_epochs_that_fit_the_budget_run_on():
    trainer = StopRecorder()
    budget = CpuBudget(100.0, clock=FakeClock([0.0, 30.0, 60.0, 75.0]))
    budget.on_fit_start(trainer)
    trainer.validated(budget)  # 30 used, epoch 30: 60 <= 100
    trainer.validated(budget)  # 60 used, epoch 30: 90 <= 100
    trainer.validated(budget)  # 75 used, epoch 15: 90 <= 100
    assert trainer.reasons == []


def test_a_dearer_epoch_than_planned_stops_the_run_under_budget():
    trainer = StopRecorder()
    budget = CpuBudget(100.0, start=-10.0, clock=FakeClock([0.0, 30.0, 65.0]))  # 10 s of set-up counted
    budget.on_fit_start(trainer)
    trainer.validated(budget)  # 40 used + 30 = 70
    assert trainer.reasons == []
    trainer.validated(budget)  # 75 used + 35 = 110 > 100
    assert len(trainer.reasons) == 1 and "75 s of 100 s used" in trainer.reasons[0]
    assert trainer.stop_reasons == [StopReason.BUDGET]


def test_the_last_planned_epoch_is_not_stopped():
    trainer = StopRecorder(epochs=2)
    budget = CpuBudget(100.0, clock=FakeClock([0.0, 30.0, 95.0]))
    budget.on_fit_start(trainer)
    trainer.validated(budget)
    trainer.validated(budget)  # 95 used + 65 > 100, but the run has ended anyway
    assert trainer.reasons == []


def test_the_budget_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        CpuBudget(0)


def _trainer_paying_10_s_an_epoch(run_dir, epochs: int, budget_s: float) -> Trainer:
    cfg = load_config("tiny", overrides=["train.batch_size=16", "train.train_scenes=32", "train.val_scenes=16",
                                         f"train.epochs={epochs}", "train.warmup_steps=2", "model.width=32",
                                         "model.depth=2"])
    ticks = iter(range(0, 1000, 10))  # the budget's clock is read once per epoch
    return Trainer(cfg, run_dir, device="cpu", callbacks=[CpuBudget(budget_s, clock=lambda: float(next(ticks)))],
                   train_scenes=build_scenes(cfg.system, 32, seed=0), val_scenes=build_scenes(cfg.system, 16, seed=1))


def test_the_trainer_stops_cleanly_on_the_budget(tmp_path):
    result = _trainer_paying_10_s_an_epoch(tmp_path, epochs=5, budget_s=25.0).fit()
    assert result.epochs_done == 2 and result.stop_reason is StopReason.BUDGET
    assert "s of 25 s used" in result.stop_message
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_a_run_within_budget_ends_without_a_stop_reason(tmp_path):
    # the second epoch ends at 20 s and another would pass 25 s, but none is planned
    result = _trainer_paying_10_s_an_epoch(tmp_path, epochs=2, budget_s=25.0).fit()
    assert result.epochs_done == 2 and result.stop_reason is None

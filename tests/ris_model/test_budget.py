import pytest

from ris_model.batches import build_scenes
from ris_model.budget import CpuBudget
from ris_model.config import load_config
from ris_model.train import Trainer


class FakeClock:
    def __init__(self, readings):
        self.readings = list(readings)

    def __call__(self):
        return self.readings.pop(0)


class StopRecorder:
    def __init__(self):
        self.reasons = []

    def request_stop(self, reason):
        self.reasons.append(reason)


def test_stops_when_the_next_epoch_would_pass_the_budget():
    trainer = StopRecorder()
    budget = CpuBudget(100.0, clock=FakeClock([0.0, 30.0, 60.0, 75.0]))
    budget.on_fit_start(trainer)
    budget.on_validation_end(trainer, {})  # 30 used, epoch 30: 60 <= 100
    budget.on_validation_end(trainer, {})  # 60 used, epoch 30: 90 <= 100
    assert trainer.reasons == []
    budget.on_validation_end(trainer, {})  # 75 used, epoch 15: 90 <= 100
    assert trainer.reasons == []


def test_a_dearer_epoch_than_planned_stops_the_run_under_budget():
    trainer = StopRecorder()
    budget = CpuBudget(100.0, start=-10.0, clock=FakeClock([0.0, 30.0, 65.0]))  # 10 s of set-up counted
    budget.on_fit_start(trainer)
    budget.on_validation_end(trainer, {})  # 40 used + 30 = 70
    assert trainer.reasons == []
    budget.on_validation_end(trainer, {})  # 75 used + 35 = 110 > 100
    assert len(trainer.reasons) == 1 and "75 s of 100 s used" in trainer.reasons[0]


def test_the_budget_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        CpuBudget(0)


def test_the_trainer_stops_cleanly_on_the_budget(tmp_path):
    cfg = load_config("tiny", overrides=["train.batch_size=16", "train.train_scenes=32", "train.val_scenes=16",
                                         "train.epochs=5", "train.warmup_steps=2", "model.width=32", "model.depth=2"])
    ticks = iter(range(0, 1000, 10))  # every epoch "costs" 10 s
    trainer = Trainer(cfg, tmp_path, device="cpu", callbacks=[CpuBudget(25.0, clock=lambda: float(next(ticks)))],
                      train_scenes=build_scenes(cfg.system, 32, seed=0), val_scenes=build_scenes(cfg.system, 16, seed=1))
    result = trainer.fit()
    assert result.epochs_done == 2 and "CPU budget" in (result.stop_reason or "")
    assert (tmp_path / "checkpoints" / "last.pt").is_file()

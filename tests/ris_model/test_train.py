import json
import math

import pytest
import torch

from ris_model.batches import build_scenes
from ris_model.config import load_config
from ris_model.training.callbacks import Callback
from ris_model.training.stop import StopReason
from ris_model.training.train import Trainer

OVERRIDES = ["train.batch_size=16", "train.train_scenes=48", "train.val_scenes=16", "train.epochs=2",
             "train.warmup_steps=2", "model.width=32", "model.depth=2"]


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny", overrides=OVERRIDES)


@pytest.fixture(scope="module")
def data(cfg):
    return build_scenes(cfg.system, 48, seed=0), build_scenes(cfg.system, 16, seed=1)


def make(cfg, data, run_dir, callbacks=()):
    train, val = data
    return Trainer(cfg, run_dir, device="cpu", callbacks=list(callbacks), train_scenes=train, val_scenes=val)


def read_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_batch_start(self, trainer, batch_index):
        self.calls.append("batch_start")

    def on_after_backward(self, trainer, metrics):
        self.calls.append("after_backward")
        assert all(p.grad is not None for p in trainer.model.parameters())

    def on_before_optimizer_step(self, trainer, metrics):
        self.calls.append("before_step")

    def on_after_optimizer_step(self, trainer, metrics):
        self.calls.append("after_step")

    def on_epoch_end(self, trainer, metrics):
        self.calls.append("epoch_end")

    def on_validation_end(self, trainer, metrics):
        self.calls.append("validation_end")

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")


def test_callback_order(cfg, data, tmp_path):
    rec = Recorder()
    make(cfg, data, tmp_path, [rec]).fit()
    step = ["batch_start", "after_backward", "before_step", "after_step"]
    epoch = step * 3 + ["epoch_end", "validation_end"]
    assert rec.calls == ["fit_start"] + epoch * 2 + ["fit_end"]


def test_run_dir_format(cfg, data, tmp_path):
    result = make(cfg, data, tmp_path).fit()
    assert result.stop_reason is None and result.steps_taken == result.batches_seen == 6
    blob = json.loads((tmp_path / "config.json").read_text())
    assert blob["config_hash"] == cfg.hash and blob["sources"]["system.nx"] == "preset:tiny"
    lines = read_lines(tmp_path)
    assert [l["kind"] for l in lines] == ["step"] * 3 + ["epoch", "eval"] + ["step"] * 3 + ["epoch", "eval"]
    for line in lines:
        assert line["schema"] == 1 and {"step", "epoch", "time", "loss"} <= line.keys()
    step = lines[0]
    assert set(step["terms"]) == set(step["weights"]) == {"cov", "subspace", "peak", "ortho"}
    assert step["primary"] == "cov" and len(step["lr"]) == 2 and step["lr"][0] > 0
    assert set(step["grad_norm"]) == {"encoder", "factor_head", "_total"}
    assert set(step["update_norm"]) == set(step["param_norm"]) == {"encoder", "factor_head"}
    assert all(v > 0 for v in step["update_norm"].values())
    expected = sum(step["weights"][t] * step["terms"][t] for t in step["terms"])
    assert step["loss"] == pytest.approx(expected, rel=1e-5)  # the logged loss is the one back-propagated
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and (tmp_path / "checkpoints" / "best.pt").is_file()


def test_loss_decreases_on_a_fixed_split(tmp_path):
    cfg = load_config("tiny", overrides=["train.batch_size=16", "train.epochs=15", "train.warmup_steps=5",
                                         "train.lr=3e-3"])
    train = build_scenes(cfg.system, 32, seed=0, snr_db=20.0)
    trainer = Trainer(cfg, tmp_path, device="cpu", train_scenes=train, val_scenes=train)
    trainer.fit()
    evals = [l["loss"] for l in read_lines(tmp_path) if l["kind"] == "eval"]
    assert evals[-1] < 0.5 * evals[0]


class StopAfter(Callback):
    def __init__(self, n):
        self.n = n

    def on_after_optimizer_step(self, trainer, metrics):
        if trainer.state.batches_seen == self.n:
            trainer.request_stop(f"test stop after {self.n} steps")


def step_losses(run_dir):
    return [l["loss"] for l in read_lines(run_dir) if l["kind"] == "step"]


@pytest.mark.parametrize("stop_at", [3, 4])  # at an epoch boundary and mid-epoch
def test_resume_continues_exactly(cfg, data, tmp_path, stop_at):
    full = tmp_path / "full"
    make(cfg, data, full).fit()
    part = tmp_path / "part"
    first = make(cfg, data, part, [StopAfter(stop_at)]).fit()
    assert (
        first.stop_reason is StopReason.REQUESTED
        and first.stop_message.startswith("test stop")
        and first.batches_seen == stop_at
    )
    resumed = make(cfg, data, part)
    resumed.resume_from(part / "checkpoints" / "last.pt")
    resumed.fit()
    assert step_losses(part) == step_losses(full)  # same losses, bit for bit


def test_stop_before_the_step_applies_no_update(cfg, data, tmp_path):
    class StopAtBackward(Callback):
        def on_after_backward(self, trainer, metrics):
            trainer.request_stop("bad gradients")

    trainer = make(cfg, data, tmp_path, [StopAtBackward()])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert result.stop_message == "bad gradients" and result.steps_taken == 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert read_lines(tmp_path)[-1]["kind"] == "stop"
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_a_vetoed_step_is_counted_as_skipped(cfg, data, tmp_path):
    class VetoFirst(Callback):
        def on_before_optimizer_step(self, trainer, metrics):
            return "first step vetoed" if metrics["step"] == 0 else None

    make(cfg, data, tmp_path, [VetoFirst()]).fit()
    steps = [l for l in read_lines(tmp_path) if l["kind"] == "step"]
    assert steps[0]["skipped"] and steps[0]["veto"] == "first step vetoed"
    assert all(v == 0 for v in steps[0]["update_norm"].values())
    assert steps[-1]["steps_taken"] == steps[-1]["batches_seen"] - 1


def test_warmup_never_starts_at_zero(cfg, data, tmp_path):
    make(cfg, data, tmp_path).fit()
    lrs = [l["lr"][0] for l in read_lines(tmp_path) if l["kind"] == "step"]
    assert lrs[0] == pytest.approx(cfg.train.lr * cfg.train.warmup_start)
    assert max(lrs) == pytest.approx(cfg.train.lr, rel=0.05)


def test_bf16_autocast_trains_on_cpu(data, tmp_path):
    cfg = load_config("tiny", overrides=OVERRIDES + ["train.amp=bf16", "train.epochs=1"])
    result = make(cfg, data, tmp_path).fit()
    assert result.steps_taken == 3
    assert all(math.isfinite(l) for l in step_losses(tmp_path))


def test_checkpoints_load_weights_only(cfg, data, tmp_path):
    make(cfg, data, tmp_path).fit()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["config_hash"] == cfg.hash and state["trainer"]["epoch"] == 2

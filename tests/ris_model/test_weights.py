import json

import pytest

from ris_model.batches import build_scenes
from ris_model.config import ConfigError, load_config
from ris_model.training.train import Trainer
from ris_model.training.weights import WeightPlan, apply_hpo_factors

SCHEDULE = '[{"start_epoch": 1, "weights": {"peak": 0.7}}, {"start_epoch": 2, "weights": {"subspace": 0.2}}]'


def test_plan_resolves_phases_cumulatively_with_sources():
    cfg = load_config("tiny", overrides=[f"loss.schedule={SCHEDULE}", "loss.weights.peak=0.1"])
    plan = WeightPlan(cfg)
    w0, s0 = plan.at_epoch(0)
    w1, s1 = plan.at_epoch(1)
    w5, s5 = plan.at_epoch(5)
    assert w0.peak == 0.1 and s0["peak"] == "cli" and s0["cov"] == "default"
    assert w1.peak == 0.7 and s1["peak"] == "schedule:phase 0@epoch 1" and w1.subspace == w0.subspace
    assert w5.peak == 0.7 and w5.subspace == 0.2 and s5["subspace"] == "schedule:phase 1@epoch 2"
    assert [(c.term, c.value) for c in plan.changes_at(2)] == [("subspace", 0.2)]
    assert plan.changes_at(3) == []


def test_hpo_multiplies_the_base_weight():
    cfg = load_config("tiny", overrides=["loss.weights.subspace=0.4"])
    trial = apply_hpo_factors(cfg, {"subspace": 2.5, "cov": 0.5}, trial=7)
    assert trial.loss.weights.subspace == pytest.approx(1.0)
    assert trial.loss.weights.cov == pytest.approx(cfg.loss.weights.cov * 0.5)
    assert trial.source_of("loss.weights.subspace").startswith("hpo:trial 7")
    with pytest.raises(ConfigError, match="must be > 0"):
        apply_hpo_factors(cfg, {"cov": 0.0}, trial=1)


def test_a_schedule_that_kills_the_primary_is_rejected_at_load():
    with pytest.raises(ConfigError, match="primary weight 'cov' to 0 from epoch 3"):
        load_config("tiny", overrides=['loss.schedule=[{"start_epoch": 3, "weights": {"cov": 0}}]'])


def test_trainer_applies_phases_and_records_history(tmp_path):
    cfg = load_config("tiny", overrides=[f"loss.schedule={SCHEDULE}", "train.epochs=3", "train.batch_size=16",
                                         "model.width=32", "model.depth=1"])
    data = build_scenes(cfg.system, 32, seed=0)
    Trainer(cfg, tmp_path, device="cpu", train_scenes=data, val_scenes=data).fit()
    steps = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in steps if l["kind"] == "step"]
    by_epoch = {l["epoch"]: l for l in steps}
    assert by_epoch[0]["weights"]["peak"] == cfg.loss.weights.peak
    assert by_epoch[1]["weights"]["peak"] == 0.7 and by_epoch[1]["weight_sources"]["peak"].startswith("schedule")
    assert by_epoch[2]["weights"]["subspace"] == 0.2
    history = json.loads((tmp_path / "config.json").read_text())["weights_history"]
    changes = [(h["term"], h["value"], h["epoch"], h["step"]) for h in history if h["epoch"] > 0]
    assert changes == [("peak", 0.7, 1, 2), ("subspace", 0.2, 2, 4)]

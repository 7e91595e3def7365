import json

import pytest

from ris_model.config import (
    DEFAULT_LOSS_WEIGHTS,
    EVALUATION_KEYS,
    PRESETS,
    Config,
    ConfigError,
    LossWeights,
    describe_keys,
    leaf_keys,
    load_config,
)


def test_sources_follow_precedence(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nlr = 5e-4\nepochs = 7\n[system]\npreset = "tiny"\n')
    cfg = load_config(None, f, ["train.epochs=3"])
    assert cfg.system.preset == "tiny" and cfg.system.nx == 4  # the file picked the preset
    assert cfg.train.lr == 5e-4 and cfg.source_of("train.lr") == f"file:{f}"
    assert cfg.train.epochs == 3 and cfg.source_of("train.epochs") == "cli"
    assert cfg.source_of("system.nx") == "preset:tiny"
    assert cfg.source_of("train.weight_decay") == "default"


def test_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("loss:\n  weights:\n    subspace: 0.3\n")
    cfg = load_config("tiny", f)
    assert cfg.loss.weights.subspace == 0.3 and cfg.loss.weights.cov == DEFAULT_LOSS_WEIGHTS.cov


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_json_round_trip_keeps_values_sources_and_hash(preset):
    cfg = load_config(preset, overrides=["train.lr=3e-4", "loss.weights.peak=0.2"])
    blob = json.loads(json.dumps(cfg.to_json()))
    back = Config.from_json(blob)
    assert back == cfg and back.hash == cfg.hash
    assert {k: back.source_of(k) for k in leaf_keys()} == {k: cfg.source_of(k) for k in leaf_keys()}


def test_hash_depends_on_values_only():
    a = load_config("tiny")
    b = load_config("tiny", overrides=[f"train.lr={a.train.lr}"])  # same value, other source
    c = load_config("tiny", overrides=[f"train.lr={a.train.lr * 2}"])
    assert a.train.lr == b.train.lr and a.hash == b.hash
    assert a.hash != c.hash


def test_hash_names_what_was_trained_not_how_it_is_evaluated():
    base = load_config("tiny")
    evaluated = load_config("tiny", overrides=["eval.refine=none", "eval.refine_steps=7",
                                               "eval.refine_radius_deg=3", "eval.refine_moves=0"])
    assert {k: evaluated.get(k) for k in EVALUATION_KEYS} != {k: base.get(k) for k in EVALUATION_KEYS}
    assert evaluated.hash == base.hash
    assert load_config("tiny", overrides=["model.eps=0.01"]).hash != base.hash


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "did you mean 'train.lr'"),
    ("loss.weights.peek=1", "did you mean 'loss.weights.peak'"),
    ("trian.lr=1", "did you mean 'train.lr'"),
    ("train.lr=-1", "out of range"),
    ("train.lr=abc", "not a valid float"),
    ("train.epochs=1.5", "not a valid int"),
    ("train.lr=nan", "not finite"),
    ("system.field=mid", "choose one of far, near"),
    ("system", "not of the form dotted.key=value"),
    ("system=3", "is a section"),
    ("loss.weights.cov=0", "primary"),
    ("system.k_min=5", "larger than system.k_max"),
])
def test_bad_overrides_name_the_problem(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides=[override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_zero_primary_needs_the_ablation_switch():
    cfg = load_config("tiny", overrides=["loss.ablation_zero_primary=true", "loss.weights.cov=0"])
    assert cfg.loss.weights.cov == 0


def test_unknown_key_in_file_is_rejected(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"train": {"learning_rate": 1e-3}}))
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        load_config("tiny", f)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("tiny", tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=")
    with pytest.raises(ConfigError, match="could not be parsed"):
        load_config("tiny", bad)


def test_loss_weights_have_no_fallback_defaults():
    with pytest.raises(TypeError):
        LossWeights(subspace=0.05, peak=0.1, ortho=0.03)  # the seed report's call, minus cov
    with pytest.raises(ConfigError, match="primary loss term 'cov'"):
        LossWeights.from_mapping({"subspace": 0.05, "peak": 0.1, "ortho": 0.03})
    with pytest.raises(ConfigError, match="'subspace' must be finite and >= 0"):
        LossWeights(cov=1.0, subspace=-0.1, peak=0.0, ortho=0.0)


def test_every_key_is_described():
    rows = describe_keys()
    assert [r[0] for r in rows] == leaf_keys()
    assert all(doc for *_, doc in rows)


def test_a_run_config_with_the_retired_input_key_still_loads(tmp_path):
    blob = load_config("tiny").to_json()
    blob["config"]["model"]["input"] = "rbp"  # written before the key was retired
    blob["sources"]["model.input"] = "default"
    assert Config.from_json(blob).model == load_config("tiny").model
    path = tmp_path / "config.json"
    path.write_text(json.dumps(blob))
    assert load_config(file=path).model == load_config("tiny").model


def test_a_retired_key_with_a_value_that_never_took_effect_is_refused():
    blob = load_config("tiny").to_json()
    blob["config"]["model"]["input"] = "rbp+rls"
    with pytest.raises(ConfigError, match="model.input='rbp\\+rls' is no longer a setting"):
        Config.from_json(blob)
    with pytest.raises(ConfigError, match="did you mean|unknown"):
        load_config("tiny", overrides=["model.input=rbp"])


def test_a_run_config_with_the_refine_keys_under_model_loads_them_under_eval(tmp_path):
    blob = load_config("tiny").to_json()
    del blob["config"]["eval"]  # written while the refine keys were model settings
    blob["config"]["model"].update(refine="none", refine_steps=7)
    blob["sources"] = {"model.refine": "cli", "model.refine_steps": "default"}
    cfg = Config.from_json(blob)
    assert cfg.eval.refine == "none" and cfg.eval.refine_steps == 7 and cfg.source_of("eval.refine") == "cli"
    assert cfg.model == load_config("tiny").model and cfg.hash == load_config("tiny").hash
    path = tmp_path / "config.json"
    path.write_text(json.dumps(blob))
    assert load_config(file=path).eval.refine == "none"


def test_a_renamed_key_given_by_hand_names_its_new_key(tmp_path):
    with pytest.raises(ConfigError, match="'model.refine_moves' is now 'eval.refine_moves'"):
        load_config("tiny", overrides=["model.refine_moves=0"])
    f = tmp_path / "c.toml"
    f.write_text('[model]\nrefine = "none"\n[eval]\nrefine = "ml"\n')
    with pytest.raises(ConfigError, match="model.refine is now eval.refine, and the config sets both"):
        load_config("tiny", f)


def test_retired_keys_at_any_depth_are_dropped(monkeypatch):
    import ris_model.config as config

    monkeypatch.setattr(config, "RETIRED_KEYS", {**config.RETIRED_KEYS, "loss.weights.old": 0.0})
    blob = load_config("tiny").to_json()
    blob["config"]["loss"]["weights"]["old"] = 0.0
    assert Config.from_json(blob).loss.weights == load_config("tiny").loss.weights
    blob["config"]["loss"]["weights"]["old"] = 0.5
    with pytest.raises(ConfigError, match="loss.weights.old=0.5 is no longer a setting"):
        Config.from_json(blob)

"""Where an effective loss weight comes from: the later source wins, says so, and a config
keeps both its values and their sources through JSON.

The order (ris_model.training.weights): preset < file < CLI --set < HPO trial (multiplies the
base) < schedule phase (absolute, from its start epoch). The expectation below is built
from the drawn layers alone, not read back from the code under test.
"""

from __future__ import annotations

import json

import pytest
from _prop_configs import MAX_EPOCH, PRIMARY, TERMS, partial, schedule_arg, set_args, trial_configs
from hypothesis import given
from hypothesis import strategies as st

from healthcheck.strategies import configs, loss_weights, schedules
from ris_model.config import MIN_PRIMARY_WEIGHT, Config, leaf_keys, load_config
from ris_model.hpo import search_space, trial_config
from ris_model.training.weights import WeightPlan

pytestmark = pytest.mark.property

PRESET = load_config("tiny")
# On a schedule-free config the real space searches a factor for every auxiliary term.
FACTOR_SPACE = {k: v for k, v in search_space(PRESET).items() if k.startswith("weight_factor.")}


@st.composite
def layers(draw):
    drawn = draw(configs(
        # weights below MIN_PRIMARY_WEIGHT are refused at load (see test_prop_weight_underflow)
        weights=partial(loss_weights(terms=TERMS, primary=PRIMARY, min_weight=MIN_PRIMARY_WEIGHT)),  # the file's
        overrides=partial(loss_weights(terms=TERMS, primary=PRIMARY, min_weight=MIN_PRIMARY_WEIGHT)),  # --set
        hpo=FACTOR_SPACE,
        schedule=schedules(terms=TERMS, primary=PRIMARY, max_phases=3, max_epoch=MAX_EPOCH,
                           min_weight=MIN_PRIMARY_WEIGHT)))
    searched = draw(st.sets(st.sampled_from(sorted(drawn["hpo"]))))
    # A factor may land on a term the schedule also sets: the schedule must still win there.
    drawn["hpo"] = {k.split(".", 1)[1]: v for k, v in drawn["hpo"].items() if k in searched}
    drawn["schedule_in"] = draw(st.sampled_from(("file", "cli")))
    drawn["trial"] = draw(st.integers(0, 9999))
    return drawn


def _expected_base(term, layer, path, trial):
    """(value, source, is_hpo) of a base weight from the layers, lowest to highest."""
    value, source = getattr(PRESET.loss.weights, term), PRESET.source_of(f"loss.weights.{term}")
    if term in layer["weights"]:
        value, source = layer["weights"][term], f"file:{path}"
    if term in layer["overrides"]:
        value, source = layer["overrides"][term], "cli"
    if term in layer["hpo"]:
        value, source = value * layer["hpo"][term], f"hpo:trial {trial} "
    return value, source


def _same_source(got, expected):
    return got.startswith(expected) if expected.startswith("hpo:") else got == expected


@given(layers())
def test_the_later_source_wins_and_is_recorded(tmp_path_factory, layer):
    path = tmp_path_factory.mktemp("layers") / "run.json"
    loss = {"weights": layer["weights"]}
    if layer["schedule_in"] == "file" and layer["schedule"]:
        loss["schedule"] = layer["schedule"]
    path.write_text(json.dumps({"loss": loss}))
    args = set_args(layer["overrides"])
    if layer["schedule_in"] == "cli":
        args += schedule_arg(layer["schedule"])
    trial = layer["trial"]
    cfg = load_config("tiny", file=path, overrides=args)
    if layer["hpo"]:
        cfg = trial_config(cfg, {f"weight_factor.{t}": f for t, f in layer["hpo"].items()}, trial)

    base = {t: _expected_base(t, layer, path, trial) for t in TERMS}
    for term, (value, source) in base.items():
        assert getattr(cfg.loss.weights, term) == value, term
        assert _same_source(cfg.source_of(f"loss.weights.{term}"), source), (
            term,
            cfg.source_of(f"loss.weights.{term}"),
        )

    plan = WeightPlan(cfg)
    for epoch in range(MAX_EPOCH + 2):
        expected = dict(base)
        for i, phase in enumerate(layer["schedule"]):
            if phase["start_epoch"] <= epoch:
                for term, value in phase["weights"].items():
                    expected[term] = (value, f"schedule:phase {i}@epoch {phase['start_epoch']}")
        weights, sources = plan.at_epoch(epoch)
        for term, (value, source) in expected.items():
            assert getattr(weights, term) == value, (epoch, term)
            assert _same_source(sources[term], source), (epoch, term, sources[term], source)


@given(trial_configs())
def test_a_config_round_trips_through_json_with_its_sources(drawn):
    cfg = drawn.cfg
    back = Config.from_json(json.loads(json.dumps(cfg.to_json())))
    assert back == cfg
    assert back.hash == cfg.hash
    assert {k: back.source_of(k) for k in leaf_keys()} == {k: cfg.source_of(k) for k in leaf_keys()}
    a, b = WeightPlan(cfg), WeightPlan(back)
    for epoch in range(MAX_EPOCH + 2):
        assert a.at_epoch(epoch) == b.at_epoch(epoch)

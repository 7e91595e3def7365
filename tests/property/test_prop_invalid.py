"""Broken loss weights are refused with a ConfigError that names what is wrong, on every
route into a run: HybridLoss, LossWeights.from_mapping, --set, a config file, a schedule
phase and an HPO factor. Never silently accepted, never a stray TypeError or KeyError."""

from __future__ import annotations

import json
import math

import pytest
from _prop_configs import MAX_EPOCH, PRIMARY, TERMS, schedule_arg, set_args
from hypothesis import example, given
from hypothesis import strategies as st

from healthcheck.strategies import invalid_loss_weights, loss_weights, schedules
from ris_model.config import MIN_PRIMARY_WEIGHT, ConfigError, LossWeights, load_config
from ris_model.loss import HybridLoss
from ris_model.training.weights import apply_hpo_factors

pytestmark = pytest.mark.property

# A --set or a file layer only changes the keys it names: leaving the primary out there
# keeps the earlier value, so "missing" is a defect only where every term must be named.
SETTABLE = ("negative", "non_finite", "unknown_term", "zero_primary")


def culprits(weights):
    """The names a good error message must mention (any one of them), found independently."""
    unknown = [k for k in weights if k not in TERMS]
    missing = [t for t in TERMS if t not in weights]
    bad = [k for k, v in weights.items() if k in TERMS and not (math.isfinite(v) and v >= 0)]
    zero = [PRIMARY] if weights.get(PRIMARY, 1.0) == 0 else []
    found = unknown + missing + bad + zero
    assert found, f"the strategy drew a valid dict: {weights}"
    return found


def assert_names_culprit(err, names):
    message = str(err.value)
    assert any(repr(name) in message or f".{name}" in message for name in names), message


@given(invalid_loss_weights(terms=TERMS, primary=PRIMARY))
def test_hybrid_loss_refuses_every_broken_mapping(tiny, weights):
    with pytest.raises(ConfigError) as err:
        HybridLoss(weights, system=tiny.system)
    assert_names_culprit(err, culprits(weights))


@given(invalid_loss_weights(terms=TERMS, primary=PRIMARY,
                            kinds=("negative", "non_finite", "unknown_term", "missing_primary")))
def test_loss_weights_refuse_every_broken_mapping(weights):
    # (0 for the primary is a legal LossWeights, for ablations; HybridLoss and the config refuse it.)
    with pytest.raises(ConfigError) as err:
        LossWeights.from_mapping(weights)
    assert_names_culprit(err, culprits(weights))


@given(invalid_loss_weights(terms=TERMS, primary=PRIMARY, kinds=SETTABLE), st.sampled_from(("cli", "file")))
def test_cli_and_file_refuse_every_broken_weight(tmp_path_factory, weights, route):
    if route == "cli":
        path, args = None, set_args(weights)
    else:
        path, args = tmp_path_factory.mktemp("bad") / "bad.json", []
        path.write_text(json.dumps({"loss": {"weights": weights}}))  # NaN/Infinity as JSON tokens
    with pytest.raises(ConfigError) as err:
        load_config("tiny", file=path, overrides=args)
    assert_names_culprit(err, culprits(weights))


@given(schedules(terms=TERMS, primary=PRIMARY, max_phases=2, max_epoch=MAX_EPOCH),
       invalid_loss_weights(terms=TERMS, primary=PRIMARY, kinds=SETTABLE),
       st.integers(0, MAX_EPOCH), st.data())
def test_a_schedule_with_a_broken_phase_is_refused(schedule, weights, start, data):
    # The broken phase names its defect and maybe some valid neighbours, at a fresh start
    # epoch; "zero_primary" is the schedule that kills the primary from that epoch on.
    bad_key = culprits(weights)[0]
    keep = data.draw(st.sets(st.sampled_from(sorted(weights))))
    phase = {k: v for k, v in weights.items() if k in keep or k == bad_key}
    starts = {p["start_epoch"] for p in schedule}
    while start in starts:
        start = (start + 1) % (MAX_EPOCH + 1)
    schedule = sorted(schedule + [{"start_epoch": start, "weights": phase}], key=lambda p: p["start_epoch"])
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides=schedule_arg(schedule))
    assert_names_culprit(err, [bad_key])


_BASE = {"cov": 1e-300, "subspace": 5.0, "peak": 0.0, "ortho": 1e-3}


@given(loss_weights(terms=TERMS, primary=PRIMARY), st.sampled_from(TERMS),
       st.floats(allow_nan=True, allow_infinity=True))
@example(_BASE, PRIMARY, 1e-30)  # the primary underflows to exactly 0
@example(_BASE, "subspace", 1e308)  # overflows to inf
@example(_BASE, "peak", 2.0)  # a switched-off term stays off
def test_an_hpo_factor_never_leaves_a_dead_or_broken_weight(base, term, factor):
    try:
        cfg = load_config("tiny", overrides=set_args(base))
    except ConfigError:  # a base primary below MIN_PRIMARY_WEIGHT is refused before any trial
        assert base[PRIMARY] < MIN_PRIMARY_WEIGHT
        return
    product = base[term] * factor if math.isfinite(factor) else math.nan
    acceptable = factor > 0 and math.isfinite(product) and (term != PRIMARY or product >= MIN_PRIMARY_WEIGHT)
    if acceptable:
        trial = apply_hpo_factors(cfg, {term: factor}, trial=0)
        assert getattr(trial.loss.weights, term) == product
    else:  # factor <= 0 or NaN, or a product that overflows, or a primary that underflows to 0
        with pytest.raises(ConfigError, match=term):
            apply_hpo_factors(cfg, {term: factor}, trial=0)

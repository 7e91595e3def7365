"""The primary weight stays > 0 at every epoch of every config that loads, and a config
that would make it 0 anywhere does not load (the seed report's bug, at config time)."""

from __future__ import annotations

import json
import math

import pytest
from _prop_configs import MAX_EPOCH, PRIMARY, TERMS, partial, schedule_arg, set_args, trial_configs
from hypothesis import given
from hypothesis import strategies as st

from healthcheck.strategies import loss_weights, schedules
from ris_model.config import MIN_PRIMARY_WEIGHT, ConfigError, load_config
from ris_model.training.weights import WeightPlan

pytestmark = pytest.mark.property


@given(trial_configs())
def test_primary_weight_is_positive_at_every_epoch(drawn):
    plan = WeightPlan(drawn.cfg)
    for epoch in range(MAX_EPOCH + 2):
        weights, sources = plan.at_epoch(epoch)
        primary = getattr(weights, PRIMARY)
        assert math.isfinite(primary) and primary > 0, (epoch, weights, sources[PRIMARY])
        assert all(math.isfinite(v) and v >= 0 for v in weights.as_dict().values())
        assert all(c.value > 0 for c in plan.changes_at(epoch) if c.term == PRIMARY)
    assert all(getattr(w, PRIMARY) > 0 for _, w in plan.timeline(MAX_EPOCH + 2))


# Three ways a person can set the primary to 0: a --set, the config file, a schedule phase.
_ZERO = st.sampled_from((0.0, -0.0))


@st.composite
def _primary_killers(draw):
    """(route, --set args, file content or None, epoch from which the primary would be 0)."""
    route = draw(st.sampled_from(("cli", "file", "schedule")))
    others = draw(partial(loss_weights(terms=TERMS, primary=PRIMARY, min_weight=MIN_PRIMARY_WEIGHT)))
    others.pop(PRIMARY, None)
    schedule = draw(
        schedules(terms=TERMS, primary=PRIMARY, max_phases=2, max_epoch=MAX_EPOCH, min_weight=MIN_PRIMARY_WEIGHT)
    )
    if route == "schedule":
        start = draw(st.integers(0, MAX_EPOCH).filter(lambda e: e not in {p["start_epoch"] for p in schedule}))
        schedule = sorted(
            schedule + [{"start_epoch": start, "weights": {PRIMARY: draw(_ZERO)}}], key=lambda p: p["start_epoch"]
        )
        return route, set_args(others) + schedule_arg(schedule), None, start
    zero = {PRIMARY: draw(_ZERO)}
    if route == "cli":
        return route, set_args({**others, **zero}) + schedule_arg(schedule), None, 0
    return route, set_args(others) + schedule_arg(schedule), {"loss": {"weights": zero}}, 0


@given(_primary_killers())
def test_a_config_that_zeroes_the_primary_is_rejected_at_load(tmp_path_factory, killer):
    route, args, file_blob, epoch = killer
    path = None
    if file_blob is not None:
        path = tmp_path_factory.mktemp("cfg") / "zero.json"
        path.write_text(json.dumps(file_blob))
    with pytest.raises(ConfigError, match=PRIMARY) as err:
        load_config("tiny", file=path, overrides=args)
    if route == "schedule":
        assert f"epoch {epoch}" in str(err.value)

    # The same config is accepted as a deliberate ablation, and then the plan shows the 0:
    # the rejection is about the primary weight, not about zeros or the route. (The flag
    # goes into the layer that sets the 0: each layer is validated as it is applied.)
    if path is not None:
        path.write_text(json.dumps({"loss": {**file_blob["loss"], "ablation_zero_primary": True}}))
    cfg = load_config("tiny", file=path, overrides=args + ["loss.ablation_zero_primary=true"])
    if route == "schedule":
        assert getattr(WeightPlan(cfg).at_epoch(epoch)[0], PRIMARY) == 0
    else:  # the base weight; a schedule phase may still set the primary from epoch 0
        assert getattr(cfg.loss.weights, PRIMARY) == 0

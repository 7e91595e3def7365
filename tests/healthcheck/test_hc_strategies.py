"""healthcheck.strategies: bad bounds fail at once and name the values; every draw keeps
the promises of its docstring (checked by independent predicates, not by the code)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from healthcheck.strategies import INVALID_KINDS, configs, hpo_samples, invalid_loss_weights, loss_weights, schedules

TERMS = ("mse", "kl", "smooth")
quick = settings(max_examples=60, derandomize=True, deadline=None)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: loss_weights(terms=TERMS, min_weight=2, max_weight=1), "min_weight=2.0 is larger than max_weight=1.0"),
        (lambda: loss_weights(terms=TERMS, min_weight=-1), "min_weight=-1"),
        (lambda: loss_weights(terms=TERMS, max_weight=math.inf), "max_weight=inf"),
        (lambda: loss_weights(terms="mse"), "terms='mse'"),
        (lambda: loss_weights(terms=()), "terms=()"),
        (lambda: loss_weights(terms=("a", "a")), "repeats 'a'"),
        (lambda: loss_weights(terms=TERMS, primary="nll"), "primary='nll'"),
        (lambda: loss_weights(terms=TERMS, primary="mse", min_primary=5, max_weight=1), "min_primary=5.0 is larger"),
        (lambda: loss_weights(terms=TERMS, min_primary=0.1), "min_primary=0.1 needs a primary"),
        (lambda: loss_weights(terms=TERMS, primary="mse", max_weight=0), "max_weight=0.0 leaves no room"),
        (lambda: loss_weights(terms=TERMS, allow_zero="yes"), "allow_zero='yes'"),
        (lambda: schedules(terms=TERMS, min_phases=4, max_phases=2), "min_phases=4 is larger than max_phases=2"),
        (lambda: schedules(terms=TERMS, min_phases=3, max_epoch=1), "min_phases=3 distinct start epochs"),
        (lambda: schedules(terms=TERMS, max_epoch=-1), "max_epoch=-1"),
        (
            lambda: hpo_samples({"lr": {"type": "float", "low": 1.0, "high": 0.1}}),
            "space['lr'] low=1.0 is larger than high=0.1",
        ),
        (
            lambda: hpo_samples({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}),
            "log=True needs low > 0",
        ),
        (lambda: hpo_samples({"lr": {"type": "float", "low": 0.1, "high": 1.0, "step": 0.0}}), "step must be > 0"),
        (lambda: hpo_samples({"n": {"type": "int", "low": 1, "high": 8, "step": 0}}), "step=0"),
        (lambda: hpo_samples({"x": {"type": "normal"}}), "type='normal'"),
        (lambda: hpo_samples({"x": {"type": "float", "lo": 0}}), "unknown field(s) ['lo']"),
        (lambda: hpo_samples({"opt": {"choices": []}}), "choices=[]"),
        (lambda: hpo_samples({"x": 3}), "space['x']=3"),
        (lambda: configs(), "at least one of"),
        (lambda: configs(weights={"mse": 1.0}), "weights must be a hypothesis strategy"),
        (lambda: invalid_loss_weights(terms=TERMS, primary=None, kinds=["zero_primary"]), "needs a primary term"),
        (lambda: invalid_loss_weights(terms=TERMS, primary="mse", kinds=["typo"]), "kinds holds 'typo'"),
    ],
)
def test_bad_arguments_fail_when_the_strategy_is_built(call, message):
    with pytest.raises(InvalidArgument) as err:
        call()  # not drawn from: the check is eager
    assert message in str(err.value)


@quick
@given(st.data(), st.floats(0, 5), st.floats(0, 5), st.booleans(), st.sampled_from((None, *TERMS)))
def test_loss_weights_stay_in_bounds_and_keep_the_primary_on(data, a, b, allow_zero, primary):
    lo, hi = min(a, b), max(a, b)
    if hi == 0:
        hi = 1.0
    w = data.draw(loss_weights(terms=TERMS, primary=primary, min_weight=lo, max_weight=hi, allow_zero=allow_zero))
    assert list(w) == list(TERMS)
    for term, value in w.items():
        assert math.isfinite(value) and value <= hi
        assert value >= lo or (allow_zero and value == 0 and term != primary)
        if term == primary or not allow_zero:
            assert value > 0


def test_switched_off_terms_and_a_zero_primary_are_reachable():
    assert find(loss_weights(terms=TERMS, primary="mse", min_weight=0.5), lambda w: w["kl"] == 0)["kl"] == 0
    zero = loss_weights(terms=TERMS, primary="mse", min_primary=0.0)
    assert find(zero, lambda w: w["mse"] == 0)["mse"] == 0


SPACE = {
    "lr": FloatDistribution(1e-6, 1e-2, log=True),
    "dropout": FloatDistribution(0.0, 0.5, step=0.1),
    "width": IntDistribution(16, 256, step=16),
    "opt": CategoricalDistribution(["adam", "sgd"]),
    "wd": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "depth": {"type": "int", "low": 1, "high": 4},
}


@quick
@given(hpo_samples(SPACE))
def test_hpo_samples_respect_every_distribution(p):
    assert set(p) == set(SPACE)
    assert 1e-6 <= p["lr"] <= 1e-2 and 1e-5 <= p["wd"] <= 1e-1
    assert 0 <= p["dropout"] <= 0.5 and abs(p["dropout"] / 0.1 - round(p["dropout"] / 0.1)) < 1e-9
    assert 16 <= p["width"] <= 256 and p["width"] % 16 == 0
    assert p["opt"] in ("adam", "sgd") and p["depth"] in (1, 2, 3, 4)


def test_log_ranges_reach_every_decade():
    lr = hpo_samples({"lr": FloatDistribution(1e-6, 1e-2, log=True)})
    for decade in range(-6, -2):
        found = find(lr, lambda p, d=decade: 10.0**d < p["lr"] < 10.0 ** (d + 1))["lr"]
        assert 10.0**decade < found < 10.0 ** (decade + 1)


@quick
@given(schedules(terms=TERMS, primary="mse", max_phases=4, max_epoch=20, min_weight=0.1, max_weight=3.0))
def test_schedules_are_sorted_distinct_and_never_kill_the_primary(phases):
    starts = [p["start_epoch"] for p in phases]
    assert starts == sorted(set(starts)) and all(0 <= s <= 20 for s in starts) and len(phases) <= 4
    for p in phases:
        assert p["weights"] and set(p["weights"]) <= set(TERMS)
        assert all(v == 0 or 0.1 <= v <= 3.0 for v in p["weights"].values())
        assert p["weights"].get("mse", 1.0) > 0


def _is_invalid(w, primary):
    return (
        any(k not in TERMS for k in w)
        or primary not in w
        or w[primary] == 0
        or any(not math.isfinite(v) or v < 0 for v in w.values())
    )


@quick
@given(invalid_loss_weights(terms=TERMS, primary="mse"))
def test_invalid_weights_are_always_invalid(w):
    assert _is_invalid(w, "mse")


@pytest.mark.parametrize("kind", INVALID_KINDS)
def test_every_kind_of_defect_is_drawn(kind):
    checks = {
        "negative": lambda w: any(math.isfinite(v) and v < 0 for v in w.values()),
        "non_finite": lambda w: any(not math.isfinite(v) for v in w.values()),
        "unknown_term": lambda w: any(k not in TERMS for k in w),
        "missing_primary": lambda w: "mse" not in w,
        "zero_primary": lambda w: w.get("mse") == 0,
    }
    find(invalid_loss_weights(terms=TERMS, primary="mse", kinds=[kind]), checks[kind])


@quick
@given(
    configs(
        weights=loss_weights(terms=TERMS, primary="mse"),
        hpo={"lr": {"type": "float", "low": 0.1, "high": 1}},
        schedule=schedules(terms=TERMS, primary="mse"),
    )
)
def test_configs_compose_the_parts_it_is_given(c):
    assert set(c) == {"weights", "hpo", "schedule"}
    assert c["weights"]["mse"] > 0 and 0.1 <= c["hpo"]["lr"] <= 1


def test_the_module_imports_neither_torch_nor_the_model():
    code = (
        "import sys, healthcheck.strategies; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ris_model', 'optuna')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]))


def test_a_range_of_only_subnormal_floats_still_draws():
    w = find(loss_weights(terms=TERMS, max_weight=1e-310, allow_zero=False), lambda w: True)
    assert all(0 < v <= 1e-310 for v in w.values())

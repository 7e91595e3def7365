"""Hypothesis strategies for loss-weight configs, generic over your own loss terms.

A loss built from weighted terms fails silently when a weight ends up wrong: the seed
report's primary weight reached 0 after weights were set in several places (defaults,
a config file, the command line, an HPO trial, a schedule) and training "ran" with no
learning signal. Example-based tests pick the weights their author thought of; these
strategies draw the ones nobody thought of, so a property ("the total is > 0 whenever
the primary weight is", "a zero primary is refused") is checked over the whole space.

Nothing here knows about a particular model: you pass your own term names and the name
of the primary term. Every bound is checked when the strategy is built, not when it is
drawn from, and a bad bound raises :class:`hypothesis.errors.InvalidArgument` naming the
values (``min_weight=2.0 is larger than max_weight=1.0``). A quick start::

    from hypothesis import given
    from healthcheck.strategies import invalid_loss_weights, loss_weights

    TERMS = ("mse", "kl", "smooth")

    @given(loss_weights(terms=TERMS, primary="mse", min_weight=1e-3))
    def test_total_is_positive(weights):
        assert MyLoss(weights)(prediction, target) > 0

    @given(invalid_loss_weights(terms=TERMS, primary="mse"))
    def test_bad_weights_are_refused(weights):
        with pytest.raises(ValueError):
            MyLoss(weights)
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from hypothesis import note
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.strategies import SearchStrategy

# What `invalid_loss_weights` can break, one defect per drawn dict.
INVALID_KINDS = ("negative", "non_finite", "unknown_term", "missing_primary", "zero_primary")
_NEEDS_PRIMARY = frozenset({"missing_primary", "zero_primary"})
_DIST_KEYS = {"type", "low", "high", "log", "step", "choices"}


# ----------------------------------------------------------------- argument checks
def _check_terms(terms: Any) -> tuple[str, ...]:
    if isinstance(terms, str) or not isinstance(terms, Collection):
        raise InvalidArgument(f"terms must be a sequence of term names, e.g. terms=('mse', 'kl'), "
                              f"but got terms={terms!r}")
    names = tuple(terms)
    if not names:
        raise InvalidArgument("terms must name at least one loss term, but got terms=()")
    bad = [t for t in names if not isinstance(t, str) or not t]
    if bad:
        raise InvalidArgument(f"every term must be a non-empty string, but terms={names!r} holds {bad[0]!r}")
    dupes = sorted({t for t in names if names.count(t) > 1})
    if dupes:
        raise InvalidArgument(f"terms must be distinct, but terms={names!r} repeats {dupes[0]!r}")
    return names


def _check_primary(primary: Any, terms: tuple[str, ...]) -> str | None:
    if primary is not None and primary not in terms:
        raise InvalidArgument(f"primary={primary!r} is not one of terms={terms!r}")
    return primary


def _check_bound(name: str, value: Any, *, floor: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number, but got {name}={value!r}")
    if floor is not None and value < floor:
        raise InvalidArgument(f"{name}={value!r} is below {floor}: a loss weight cannot be negative")
    return float(value)


def _check_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise InvalidArgument(f"{name} must be an integer{bound}, but got {name}={value!r}")
    return value


def _check_order(lo_name: str, lo: float, hi_name: str, hi: float) -> None:
    if lo > hi:
        raise InvalidArgument(f"{lo_name}={lo!r} is larger than {hi_name}={hi!r}")


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False, but got {name}={value!r}")
    return value


# -------------------------------------------------------------------- weights
def _weight_values(lo: float, hi: float, *, positive: bool) -> SearchStrategy[float]:
    """Finite weights in [lo, hi]; with ``positive``, 0 itself is left out."""
    # Subnormal floats are left out unless a bound is one: they are a property of the
    # float format, not of a config anyone writes.
    subnormal = any(0 < abs(x) < sys.float_info.min for x in (lo, hi))
    return st.floats(lo, hi, exclude_min=positive and lo == 0.0, allow_nan=False,
                     allow_infinity=False, allow_subnormal=subnormal)


def loss_weights(*, terms: Sequence[str], primary: str | None = None, min_weight: float = 0.0,
                 max_weight: float = 10.0, min_primary: float | None = None,
                 allow_zero: bool = True) -> SearchStrategy[dict[str, float]]:
    """Dicts ``{term: weight}`` naming every term once, each weight in [min_weight, max_weight].

    - ``primary``: the term that carries the learning signal. Its weight is always > 0
      (drawn from (0, max_weight] when ``min_weight`` is 0), unless you pass
      ``min_primary``: the primary is then drawn from [min_primary, max_weight], and
      ``min_primary=0`` lets it be 0 (for testing that your code refuses that).
    - ``allow_zero``: auxiliary terms are also drawn exactly 0 ("switched off"), often,
      even when ``min_weight`` > 0; with ``allow_zero=False`` every weight is > 0.

    Example: a user's loss must stay positive and finite whenever its primary term is on::

        @given(w=loss_weights(terms=("mse", "kl"), primary="mse", min_weight=1e-3))
        def test_loss_positive(w):
            total = w["mse"] * mse(pred, y) + w["kl"] * kl(pred, y)
            assert math.isfinite(total) and total > 0
    """
    terms = _check_terms(terms)
    primary = _check_primary(primary, terms)
    min_weight = _check_bound("min_weight", min_weight, floor=0.0)
    max_weight = _check_bound("max_weight", max_weight, floor=0.0)
    _check_order("min_weight", min_weight, "max_weight", max_weight)
    allow_zero = _check_bool("allow_zero", allow_zero)
    if min_primary is not None:
        if primary is None:
            raise InvalidArgument(f"min_primary={min_primary!r} needs a primary term; pass primary=<one of {terms!r}>")
        min_primary = _check_bound("min_primary", min_primary, floor=0.0)
        _check_order("min_primary", min_primary, "max_weight", max_weight)
    if max_weight == 0.0 and primary is not None and min_primary is None:
        raise InvalidArgument(f"max_weight={max_weight!r} leaves no room for a primary weight > 0; "
                              f"raise max_weight, or pass min_primary=0.0 to allow a zero primary")
    if max_weight == 0.0 and not allow_zero:
        raise InvalidArgument(f"max_weight={max_weight!r} with allow_zero=False leaves no weight to draw")

    aux = _weight_values(min_weight, max_weight, positive=not allow_zero)
    if allow_zero:
        aux = st.just(0.0) | aux  # switched-off terms come up often, not only while shrinking
    if min_primary is None:
        prim = _weight_values(min_weight, max_weight, positive=True)
    else:
        prim = _weight_values(min_primary, max_weight, positive=False)
    # In the order of ``terms``, so a printed example reads like the user's config.
    return st.fixed_dictionaries({t: prim if t == primary else aux for t in terms}).map(
        lambda w: {t: w[t] for t in terms})


# ------------------------------------------------------------------------ HPO
def _dist_fields(name: str, dist: Any) -> dict[str, Any]:
    """One search-space entry as plain fields; optuna's classes are read by attribute."""
    where = f"space[{name!r}]"
    if isinstance(dist, Mapping):
        unknown = set(dist) - _DIST_KEYS
        if unknown:
            raise InvalidArgument(f"{where} has unknown field(s) {sorted(unknown)}; "
                                  f"valid fields are {sorted(_DIST_KEYS)}")
        kind = dist.get("type")
        if kind is None:
            kind = "categorical" if "choices" in dist else None
        if kind not in ("float", "int", "categorical"):
            raise InvalidArgument(f"{where} type={kind!r} is not one of 'float', 'int', 'categorical'")
        return {"type": kind, **{k: v for k, v in dist.items() if k != "type"}}
    if hasattr(dist, "choices"):
        return {"type": "categorical", "choices": dist.choices}
    if hasattr(dist, "low") and hasattr(dist, "high"):
        cls = type(dist).__name__
        if "Int" in cls:
            kind = "int"
        elif "Float" in cls or "Uniform" in cls:
            kind = "float"
        else:
            integral = all(isinstance(v, int) and not isinstance(v, bool) for v in (dist.low, dist.high))
            kind = "int" if integral else "float"
        step = getattr(dist, "step", None)
        if step is None:
            step = getattr(dist, "q", None)  # optuna's older discrete distributions
        return {
            "type": kind,
            "low": dist.low,
            "high": dist.high,
            "step": step,
            "log": bool(getattr(dist, "log", False) or "LogUniform" in cls),
        }
    raise InvalidArgument(
        f"{where}={dist!r} is neither a distribution (low/high or choices) nor a dict "
        f"like {{'type': 'float', 'low': 0.1, 'high': 1.0, 'log': True}}"
    )


def _distribution(name: str, dist: Any) -> SearchStrategy[Any]:
    f = _dist_fields(name, dist)
    where = f"space[{name!r}]"
    if f["type"] == "categorical":
        choices = f.get("choices")
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Collection) or not choices:
            raise InvalidArgument(f"{where} needs a non-empty list of choices, but got choices={choices!r}")
        return st.sampled_from(tuple(choices))
    if "low" not in f or "high" not in f:
        raise InvalidArgument(f"{where} needs low and high, but got {dist!r}")
    log, step = f.get("log", False), f.get("step")
    _check_bool(f"{where} log", log)
    if f["type"] == "int":
        int_low, int_high = _check_int(f"{where} low", f["low"]), _check_int(f"{where} high", f["high"])
        int_step = 1 if step is None else _check_int(f"{where} step", step, 1)
        _check_order(f"{where} low", int_low, "high", int_high)
        if log and int_low < 1:
            raise InvalidArgument(f"{where} log=True needs low >= 1, but got low={int_low!r}")
        return st.integers(0, (int_high - int_low) // int_step).map(lambda k: int_low + k * int_step)
    low, high = _check_bound(f"{where} low", f["low"]), _check_bound(f"{where} high", f["high"])
    _check_order(f"{where} low", low, "high", high)
    if step is not None:
        float_step = _check_bound(f"{where} step", step)
        if float_step <= 0:
            raise InvalidArgument(f"{where} step must be > 0, but got step={step!r}")
        if log:
            raise InvalidArgument(f"{where} cannot have both step={step!r} and log=True")
        n = int(math.floor((high - low) / float_step + 1e-9))
        return st.integers(0, n).map(lambda k: min(low + k * float_step, high))
    if log:
        if low <= 0:
            raise InvalidArgument(f"{where} log=True needs low > 0, but got low={low!r}")
        if low == high:
            return st.just(low)
        # Uniform in log space, like the sampler: every decade is visited, not only the top one.
        inner = st.floats(math.log(low), math.log(high)).map(lambda x: min(max(math.exp(x), low), high))
        return st.sampled_from((low, high)) | inner
    return st.floats(low, high, allow_nan=False, allow_infinity=False)


def hpo_samples(space: Mapping[str, Any]) -> SearchStrategy[dict[str, Any]]:
    """One HPO trial's parameters ``{name: value}``, drawn from a search-space description.

    ``space`` maps a parameter name to either an optuna distribution (``FloatDistribution``,
    ``IntDistribution``, ``CategoricalDistribution``, read by their attributes, so optuna
    need not be imported here) or a plain dict: ``{"type": "float", "low": 1e-4,
    "high": 1e-2, "log": True}``, ``{"type": "int", "low": 16, "high": 256, "step": 16}``,
    ``{"type": "categorical", "choices": ["adam", "sgd"]}``. Values stay inside the bounds
    (and on the step grid); log-scaled ranges are drawn uniformly in log space, so small
    values are tried as often as large ones. Every entry is checked at once.

    Example: every trial the real study can propose must keep the user's loss alive::

        space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                 "kl_factor": {"type": "float", "low": 0.25, "high": 4.0, "log": True}}

        @given(hpo_samples(space))
        def test_trial_keeps_the_primary(params):
            w = base_weights | {"kl": base_weights["kl"] * params["kl_factor"]}
            assert MyLoss(w)(pred, y) > 0
    """
    if not isinstance(space, Mapping):
        raise InvalidArgument(f"space must be a mapping of parameter name to distribution, but got space={space!r}")
    names = list(space)
    return st.fixed_dictionaries({name: _distribution(name, dist) for name, dist in space.items()}).map(
        lambda p: {name: p[name] for name in names}
    )


# -------------------------------------------------------------------- schedules
def schedules(
    *,
    terms: Sequence[str],
    primary: str | None = None,
    min_phases: int = 0,
    max_phases: int = 3,
    max_epoch: int = 100,
    min_weight: float = 0.0,
    max_weight: float = 10.0,
) -> SearchStrategy[list[dict[str, Any]]]:
    """Weight schedules: lists of ``{"start_epoch": int, "weights": {term: value}}``.

    Phases come sorted by strictly increasing ``start_epoch`` in [0, max_epoch]; each names
    a non-empty subset of ``terms`` with ABSOLUTE values in [min_weight, max_weight], and a
    phase that names the primary never sets it to 0. (Auxiliary terms may be switched off.)

    Example: whichever phase is active, the user's loss still learns from its primary::

        @given(schedules(terms=TERMS, primary="mse", max_epoch=20), st.integers(0, 30))
        def test_primary_on_in_every_phase(schedule, epoch):
            assert weights_at(schedule, epoch)["mse"] > 0
    """
    terms = _check_terms(terms)
    primary = _check_primary(primary, terms)
    min_phases = _check_int("min_phases", min_phases, 0)
    max_phases = _check_int("max_phases", max_phases, 0)
    max_epoch = _check_int("max_epoch", max_epoch, 0)
    _check_order("min_phases", min_phases, "max_phases", max_phases)
    if min_phases > max_epoch + 1:
        raise InvalidArgument(f"min_phases={min_phases} distinct start epochs do not fit in 0..max_epoch={max_epoch}")
    values = loss_weights(terms=terms, primary=primary, min_weight=min_weight, max_weight=max_weight)
    named = st.lists(st.sampled_from(terms), min_size=1, unique=True)
    phase_weights = st.tuples(values, named).map(lambda vn: {t: vn[0][t] for t in terms if t in vn[1]})
    phases = st.lists(
        st.tuples(st.integers(0, max_epoch), phase_weights),
        min_size=min_phases,
        max_size=min(max_phases, max_epoch + 1),
        unique_by=lambda p: p[0],
    )
    return phases.map(lambda ps: [{"start_epoch": e, "weights": w} for e, w in sorted(ps, key=lambda p: p[0])])


# ---------------------------------------------------------------------- configs
def configs(
    *,
    weights: SearchStrategy | None = None,
    hpo: SearchStrategy | Mapping[str, Any] | None = None,
    schedule: SearchStrategy | None = None,
    overrides: SearchStrategy | None = None,
) -> SearchStrategy[dict[str, Any]]:
    """One dict with a key per part you pass: ``{"weights", "hpo", "schedule", "overrides"}``.

    Each part is a strategy (``hpo`` may also be a search space, which goes through
    :func:`hpo_samples`). The parts are drawn independently; how they combine (which one
    wins) is your code's business, and the thing to test.

    Example: the effective primary weight of any combination stays > 0::

        @given(configs(weights=loss_weights(terms=TERMS, primary="mse"),
                       hpo=space, schedule=schedules(terms=TERMS, primary="mse")))
        def test_primary_survives(c):
            plan = resolve(c["weights"], c["hpo"], c["schedule"])
            assert all(w["mse"] > 0 for w in plan.per_epoch())
    """
    parts: dict[str, Any] = {}
    for name, part in (("weights", weights), ("hpo", hpo), ("schedule", schedule), ("overrides", overrides)):
        if part is None:
            continue
        if name == "hpo" and isinstance(part, Mapping):
            part = hpo_samples(part)
        if not isinstance(part, SearchStrategy):
            raise InvalidArgument(f"{name} must be a hypothesis strategy, but got {name}={part!r}")
        parts[name] = part
    if not parts:
        raise InvalidArgument("configs() needs at least one of weights=, hpo=, schedule=, overrides=")
    return st.fixed_dictionaries(parts)


# --------------------------------------------------------------- invalid weights
def _typo_names(terms: tuple[str, ...]) -> SearchStrategy[str]:
    """Names that are not terms: near-misses of real ones first (what a person types)."""
    near = sorted(
        {v for t in terms for v in (t + "s", t[:-1], t.upper(), "lam_" + t, t + "_weight") if v and v not in terms}
    )
    anything = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
    return (st.sampled_from(near) | anything).filter(lambda s: s not in terms)


def invalid_loss_weights(
    *, terms: Sequence[str], primary: str | None, kinds: Collection[str] | None = None, max_weight: float = 10.0
) -> SearchStrategy[dict[str, float]]:
    """Weight dicts with exactly one defect, which a correct loss or config must refuse.

    The defects (``kinds``, default all that apply): ``negative`` (a weight < 0),
    ``non_finite`` (NaN, +inf or -inf), ``unknown_term`` (a name that is not a term, often
    a near-miss like ``"covs"``), ``missing_primary`` (the primary term left out) and
    ``zero_primary`` (the primary set to 0.0 or -0.0). The last two need ``primary``.
    Everything else in the dict is a valid weight. The defect drawn is recorded with
    :func:`hypothesis.note`, so a failing example says what was wrong with it.

    Example: the user's loss refuses every broken dict instead of training on it::

        @given(invalid_loss_weights(terms=("mse", "kl"), primary="mse"))
        def test_refused(w):
            with pytest.raises(ValueError):
                MyLoss(w)
    """
    terms = _check_terms(terms)
    primary = _check_primary(primary, terms)
    if kinds is None:
        kinds = tuple(k for k in INVALID_KINDS if primary is not None or k not in _NEEDS_PRIMARY)
    else:
        if isinstance(kinds, str) or not isinstance(kinds, Collection) or not kinds:
            raise InvalidArgument(f"kinds must be a non-empty collection drawn from {INVALID_KINDS}, but got {kinds=}")
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in INVALID_KINDS]
        if unknown:
            raise InvalidArgument(f"kinds holds {unknown[0]!r}; choose from {INVALID_KINDS}")
        if primary is None and _NEEDS_PRIMARY & set(kinds):
            raise InvalidArgument(f"kinds={kinds!r} needs a primary term to break; pass primary=<one of {terms!r}>")
    base = loss_weights(terms=terms, primary=primary, max_weight=max_weight)
    negative = st.floats(max_value=0.0, exclude_max=True, allow_nan=False, allow_infinity=False).filter(lambda v: v < 0)
    defects: dict[str, Callable[[Any, dict[str, float]], object]] = {
        "negative": lambda draw, w: w.__setitem__(draw(st.sampled_from(terms)), draw(negative)),
        "non_finite": lambda draw, w: w.__setitem__(
            draw(st.sampled_from(terms)), draw(st.sampled_from((math.nan, math.inf, -math.inf)))
        ),
        "unknown_term": lambda draw, w: w.__setitem__(
            draw(_typo_names(terms)), draw(_weight_values(0.0, max_weight, positive=False))
        ),
        "missing_primary": lambda draw, w: w.pop(str(primary)),  # kinds needing it checked primary
        "zero_primary": lambda draw, w: w.__setitem__(str(primary), draw(st.sampled_from((0.0, -0.0)))),
    }

    @st.composite
    def broken(draw: Callable[[SearchStrategy[Any]], Any]) -> dict[str, float]:
        kind = draw(st.sampled_from(kinds))
        weights = dict(draw(base))
        defects[kind](draw, weights)
        note(f"invalid_loss_weights defect: {kind}")
        return weights

    return broken()


__all__ = ["INVALID_KINDS", "configs", "hpo_samples", "invalid_loss_weights", "loss_weights", "schedules"]

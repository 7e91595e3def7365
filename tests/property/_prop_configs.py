"""The ris_model config space the properties range over, built from healthcheck.strategies.

A drawn config is what a real run could meet: ``--set loss.weights.X=…`` strings and a
``loss.schedule`` on the tiny preset (through ``load_config``, exactly as the CLI passes
them), then one trial of the REAL HPO search space (``search_space(cfg)`` →
``trial_config``), which multiplies the base weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from healthcheck.strategies import configs, hpo_samples, loss_weights, schedules
from ris_model.config import MIN_PRIMARY_WEIGHT, Config, LossWeights, load_config
from ris_model.hpo import search_space, trial_config

TERMS = LossWeights.terms()
PRIMARY = LossWeights.PRIMARY
MAX_EPOCH = 12  # schedule phases start in 0..MAX_EPOCH; properties look one epoch past it
POOL = 32  # scenes in the shared pool that batches are drawn from


def partial(weights: st.SearchStrategy[dict[str, float]]) -> st.SearchStrategy[dict[str, float]]:
    """A subset of the terms of each drawn dict (a layer rarely sets every weight)."""
    return st.tuples(weights, st.sets(st.sampled_from(TERMS))).map(
        lambda ws: {t: ws[0][t] for t in TERMS if t in ws[1]})


def set_args(values: dict[str, float], prefix: str = "loss.weights.") -> list[str]:
    """``--set`` strings; repr() round-trips every float exactly (nan and inf included)."""
    return [f"{prefix}{term}={value!r}" for term, value in values.items()]


def schedule_arg(schedule: list[dict[str, Any]]) -> list[str]:
    return [f"loss.schedule={json.dumps(schedule)}"] if schedule else []


@dataclass(frozen=True)
class Drawn:
    cfg: Config  # the trial's config: CLI weights and schedule, then the HPO factors
    cli: dict[str, float]
    schedule: list[dict[str, Any]]
    params: dict[str, Any]  # the HPO trial's parameters


@st.composite
def trial_configs(draw, *, min_weight: float = MIN_PRIMARY_WEIGHT, max_weight: float = 10.0) -> Drawn:
    """A config a run could meet: tiny preset × CLI weight overrides × schedule × HPO trial.

    ``min_weight`` bounds the non-zero weights from below; the default is the smallest
    primary weight the config accepts (below it the primary vanishes in float32).
    """
    parts = draw(configs(
        overrides=partial(loss_weights(terms=TERMS, primary=PRIMARY, min_weight=min_weight, max_weight=max_weight)),
        schedule=schedules(terms=TERMS, primary=PRIMARY, max_phases=3, max_epoch=MAX_EPOCH,
                           min_weight=min_weight, max_weight=max_weight)))
    cfg = load_config("tiny", overrides=set_args(parts["overrides"]) + schedule_arg(parts["schedule"]))
    params = draw(hpo_samples(search_space(cfg)))
    trial = draw(st.integers(0, 9999))
    return Drawn(trial_config(cfg, params, trial), parts["overrides"], parts["schedule"], params)

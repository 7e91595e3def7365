"""A primary weight that is > 0 in the config but 0 in the loss's arithmetic.

Every check between a config and a step (config validation, HybridLoss, WeightPlan, the
``weights.primary_zero`` detector) compares the weight, a Python float, with 0. The loss
multiplies it with float32 terms, so a weight below ~1e-45 becomes exactly 0 there: the
seed report's failure, with every guard green. The property below says what must hold:
the config refuses such a weight (below MIN_PRIMARY_WEIGHT), or the primary term still
counts in the loss.
"""

from __future__ import annotations

import pytest
import torch
from _prop_configs import PRIMARY, TERMS, set_args
from hypothesis import example, given

from healthcheck.strategies import loss_weights
from ris_model.config import ConfigError, load_config
from ris_model.loss import HybridLoss

pytestmark = pytest.mark.property


@given(loss_weights(terms=TERMS, primary=PRIMARY))
@example({"cov": 1e-300, "subspace": 0.0, "peak": 0.0, "ortho": 0.0})
def test_an_accepted_primary_weight_is_never_zero_in_the_loss(model, scenes, weights):
    try:
        cfg = load_config("tiny", overrides=set_args(weights))
    except ConfigError:
        return  # refusing the weight at load is one acceptable answer
    batch = scenes.take(slice(0, 8))
    with torch.no_grad():
        pred = model(batch.rbp, batch.snr_db, batch.snapshots)
        out = HybridLoss(cfg.loss.weights, system=cfg.system)(pred, batch.R, batch.phi,
                                                           batch.theta, batch.r, batch.mask)
    assert float(out.terms[PRIMARY]) > 0
    primary_share = cfg.loss.weights.as_dict()[PRIMARY] * out.terms[PRIMARY]  # what the total adds up
    assert float(primary_share) > 0, f"{PRIMARY} weight {weights[PRIMARY]!r} contributes 0 to the float32 loss"

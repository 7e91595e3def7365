"""Every row of the failure catalogue (docs/failure-catalogue.md) has a code whose
detector reads that row's signal. The detectors' own tests show each code fires; this
keeps the mapping honest when codes or detectors change."""

from __future__ import annotations

import inspect

import healthcheck.detectors as D
from healthcheck.codes import CODES

# row -> codes that catch its earliest signal in a running loop
CATALOGUE = {
    1: {"weights.primary_zero", "loss.zero", "loss.primary_share", "loss.dead_term"},
    2: {"lr.zero", "lr.tiny", "param.frozen", "param.update_ratio"},
    3: {"steps.skipped", "param.frozen", "val.constant", "loss.constant"},
    4: {"amp.overflow", "amp.scale_collapse", "steps.skipped"},
    5: {"grad.nonfinite"},
    6: {"value.out_of_range", "loss.diverging", "loss.nonfinite"},
    7: {"val.plateau"},  # the loss self-test itself belongs to the preflight checks
    8: {"weights.changed"},  # unknown keys are the config's job; sources are recorded per change
    9: {"grad.none", "grad.zero"},
    10: {"loss.chance_level", "output.collapsed"},
    11: {"weights.changed", "weights.unplanned_change"},  # every change; an error if no source owns it
    12: {"output.saturated", "grad.vanishing", "grad.zero", "grad.dead_units"},
    13: {"param.not_in_optimizer"},
    14: {"loss.diverging", "grad.exploding", "loss.nonfinite", "grad.nonfinite", "param.update_ratio"},
}


def test_every_catalogue_row_has_a_detector_for_its_signal():
    emitted = {c for _, cls in inspect.getmembers(D, inspect.isclass)
               if issubclass(cls, D.Detector) for c in cls.codes}
    assert set(CATALOGUE) == set(range(1, 15))
    for row, codes in CATALOGUE.items():
        assert codes and codes <= set(CODES) and codes <= emitted, row


def test_stop_worthy_signals_are_judged_before_the_optimizer_step():
    # the catalogue's "before the optimizer step" signals must run at after_backward
    for cls in (D.NonFiniteLoss, D.NonFiniteGrad, D.PrimaryWeightZero, D.InvalidLR, D.NotInOptimizer):
        assert "after_backward" in cls.phases, cls.__name__

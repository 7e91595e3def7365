"""What every detector owes: a fault test in its family's file, codes that are all
registered and all emitted by some detector, severities the codes declare, and argument
errors that name the bad value."""

from __future__ import annotations

import inspect

import pytest
from det_cases import all_faults, steps
from hc_fakes import run

import healthcheck.detectors as D
from healthcheck.codes import CODES
from healthcheck.events import Severity

# detectors that need a live model are tested in their family's file with one
LIVE_ONLY = {"NoneGrad", "NotInOptimizer", "DeadUnits", "WeightDecay", "GradNotCleared", "TermUnreached",
             "NoDataSignal", "WeightsMovedOutside", "ScheduleSpentEarly"}


def all_detector_classes():
    return {name for name, obj in vars(D).items()
            if inspect.isclass(obj) and issubclass(obj, D.Detector) and obj is not D.Detector}


def test_every_detector_has_a_fault_test():
    assert all_detector_classes() == set(all_faults()) | LIVE_ONLY

# Codes with an emitter other than a detector: the monitor reports on itself (a detector
# that failed, the closing summary), `healthcheck watch` on the files it reads (a line that
# is not a record), and a failed preflight check of the gate becomes `preflight.<check>`
# when its verdict goes through a monitor (the detection benchmark does that).


NOT_FROM_DETECTORS = ("monitor.", "watch.", "preflight.", "run.")  # run.crashed: the loop adapters


def test_every_code_is_emitted_by_some_detector():
    emitted = {c for name in all_detector_classes() for c in getattr(D, name).codes}
    assert emitted <= set(CODES)
    assert {c for c in CODES if not c.startswith(NOT_FROM_DETECTORS)} == emitted
    assert not any(c.startswith(NOT_FROM_DETECTORS) for c in emitted)


def test_every_preflight_check_has_a_code():
    from healthcheck.preflight import default_checks

    names = [check.check_name for check in default_checks()] + ["config"]
    assert {f"preflight.{n}" for n in names} == {c for c in CODES if c.startswith("preflight.")}
    assert all(CODES[f"preflight.{n}"].severity is Severity.ERROR for n in names)


@pytest.mark.parametrize("factory, message", [
    (lambda: D.ConstantLoss(window=1), "window=1"),
    (lambda: D.DeadTerm(patience=0), "patience=0"),
    (lambda: D.PrimaryShare(min_share=1.5), "min_share=1.5"),
    (lambda: D.Divergence(factor=0.5), "factor=0.5"),
    (lambda: D.UpdateRatio(low=1.0, high=0.5), "low=1.0"),
    (lambda: D.TinyLR(min_lr=-1), "min_lr=-1"),
    (lambda: D.ChanceLevel(num_classes=1), "num_classes=1"),
    (lambda: D.SkippedSteps(window="20"), "window='20'"),
])


def test_bad_settings_name_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize("factory, message", [
    (lambda: D.BlockedUpdate(low=0.0), "low=0.0"),
    (lambda: D.ValTrainGap(max_ratio=0.5), "max_ratio=0.5"),
    (lambda: D.UnplannedWeightChange(owned="schedule"), "owned='schedule'"),
    (lambda: D.DeadUnits(min_fraction=0.0), "min_fraction=0.0"),
    (lambda: D.WeightDecay(max_product=-1), "max_product=-1"),
    (lambda: D.UpdateRatio(error_high=1e-9), "error_high=1e-09"),
    (lambda: D.SkippedSteps(first_batches=0), "first_batches=0"),
])


def test_new_settings_name_the_bad_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_every_severity_a_detector_emits_is_a_declared_tier():
    cases = [(factory(), records) for factory, records, _ in all_faults().values()] + [
        (D.UpdateRatio(), steps(6, update_norm={"encoder": 1.0, "head": 1e-3})),  # raised to error
        (D.TinyLR(), steps(12, lr=[1e-3, 2e-8])),  # raised to error
    ]
    raised = set()
    for detector, records in cases:
        for e in run(detector, records):
            info = CODES[e.code]
            assert e.severity in (info.severity, *info.raised_to), e.line()
            raised |= {e.code} if e.severity != info.severity else set()
    assert {"param.update_ratio", "lr.tiny", "steps.skipped"} <= raised

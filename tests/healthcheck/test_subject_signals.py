"""The signal detectors on every plain-PyTorch subject (healthcheck/testing/subjects): each
fault class makes its detector fire with its code and place, and the subject's healthy
loop, in every variation the benchmark uses, stays silent."""

from __future__ import annotations

import pytest
import torch

import healthcheck.detectors as D
from healthcheck.events import Severity
from healthcheck.faults import Fault, select_faults
from healthcheck.testing.detection import run_one
from healthcheck.testing.subjects import SUBJECTS, VARIANTS

MAIN_TERM = {"charlm": "nll", "imgcls": "ce", "autoencoder": "recon"}
SIGNAL_DETECTORS = (D.GradNotCleared, D.TermUnreached, D.NoDataSignal, D.WeightsMovedOutside)


def _run(subject, fault, steps, detectors, variant="plain"):
    chosen = None if fault is None else select_faults(SUBJECTS[subject].FAULTS, [fault])[0]
    return run_one(subject, 0, fault=chosen, variant=variant, steps=steps, detectors=[d() for d in detectors])


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
@pytest.mark.parametrize("fault", ["no_zero_grad", "zero_grad_head_only"])
def test_gradients_never_cleared_fire_from_the_second_step(subject, fault):
    run = _run(subject, fault, 4, [D.GradNotCleared])
    assert (run.first_code, run.first_step) == ("grad.not_cleared", 1)


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_a_detached_prediction_fires_at_the_first_probe(subject):
    run = _run(subject, f"{MAIN_TERM[subject]}_detached", 3, [D.TermUnreached])
    assert (run.first_code, run.first_step) == ("loss.term_unreached", 0)


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_targets_shuffled_apart_from_inputs_fire_after_the_warmup(subject):
    run = _run(subject, "targets_shuffled", 130, [D.NoDataSignal])
    assert run.first_code == "data.no_signal" and 100 <= run.first_step <= 130


def _reset_once(at: int) -> Fault:
    """The weights written once between two steps, before step ``at`` (EMA weights copied in
    for an evaluation and never swapped back)."""
    def inject(setup):
        compute, calls = setup.compute, [0]

        def write_then_compute(model, inputs, targets):
            if calls[0] == at * setup.accumulate:
                with torch.no_grad():
                    for module in model.modules():
                        if module is not model and hasattr(module, "reset_parameters"):
                            module.reset_parameters()
            calls[0] += 1
            return compute(model, inputs, targets)
        setup.compute = write_then_compute
    return Fault(f"reset_once@{at}", "weights", inject, start_step=at)


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_weights_reset_inside_the_loop_fire_once_the_writes_persist(subject):
    run = _run(subject, "weights_reset_each_step", 24, [D.WeightsMovedOutside])
    assert (run.first_code, run.first_step) == ("param.moved_outside", 19)


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_weights_written_once_between_steps_only_warn(subject):
    run = run_one(subject, 0, fault=_reset_once(at=10), steps=40, detectors=[D.WeightsMovedOutside()])
    assert run.codes == {"param.moved_outside": "warning"} and not run.detected


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_healthy_loop_is_silent(subject):
    run = _run(subject, None, 130, SIGNAL_DETECTORS)
    assert run.codes == {} and run.crashed is None


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "plain"])
@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_healthy_variants_raise_no_signal_error(subject, variant):
    run = _run(subject, None, 12, SIGNAL_DETECTORS, variant)
    assert not any(Severity.parse(s) >= Severity.ERROR for s in run.codes.values()) and run.crashed is None


@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_a_per_epoch_decay_stepped_per_batch_fires_with_half_the_run_left(subject):
    run = _run(subject, "lr_decays_per_step", 200, [D.ScheduleSpentEarly])
    assert (run.first_code, run.first_step) == ("lr.spent_early", 99)


@pytest.mark.parametrize("variant", ["plain", "warmup_small"])
@pytest.mark.parametrize("subject", sorted(SUBJECTS))
def test_healthy_schedules_run_to_their_planned_end_silently(subject, variant):
    run = _run(subject, None, 200, [D.ScheduleSpentEarly], variant)
    assert run.codes == {}

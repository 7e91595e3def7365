"""Every detector: one injected fault that must fire (expected code and place), and a healthy
run that must stay silent. Detectors are called directly with fake records, the way the
monitor calls them; the live-view detectors get a real tiny model."""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import healthcheck.detectors as D
from healthcheck.codes import CODES
from healthcheck.events import Severity
from healthcheck.live import LiveView
from hc_fakes import codes_where, healthy_epoch, healthy_eval, healthy_step, run

HEALTHY_STEPS = [healthy_step(i) for i in range(200)]
HEALTHY_EVALS = [healthy_eval(e) for e in range(25)]
HEALTHY = HEALTHY_STEPS + [r for e in range(25) for r in (healthy_epoch(e), healthy_eval(e))]
SOURCES = {"mse": "config", "reg": "config"}


def steps(n, start=0, **over):
    return [healthy_step(i, **over) for i in range(start, start + n)]


def with_grad(rec, **norms):
    g = {**rec.grad_norm, **norms}
    return replace(rec, grad_norm=g)


# detector factory, records with the fault, expected (code, where) pairs among the events
FAULTS = {
    "NonFiniteLoss": (D.NonFiniteLoss, steps(5) + [healthy_step(5, terms={"mse": math.nan, "reg": 0.2},
                                                                loss=math.nan)],
                      {("loss.nonfinite", "mse")}),
    "ZeroLoss": (D.ZeroLoss, steps(3) + [healthy_step(3, loss=0.0)], {("loss.zero", "total")}),
    "ConstantLoss": (D.ConstantLoss, steps(25, loss=0.4242), {("loss.constant", "total")}),
    "DeadTerm": (D.DeadTerm, [healthy_step(i, terms={"mse": 1.0, "reg": 0.0}) for i in range(12)],
                 {("loss.dead_term", "reg")}),
    "PrimaryShare": (D.PrimaryShare, steps(12, weights={"mse": 1e-3, "reg": 10.0}),
                     {("loss.primary_share", "mse")}),
    "Divergence": (D.Divergence, steps(40) + [healthy_step(i, loss=1e3 * (i - 39)) for i in range(40, 50)],
                   {("loss.diverging", "total")}),
    "PrimaryWeightZero": (D.PrimaryWeightZero, [healthy_step(0, weights={"mse": 0.0, "reg": 0.1})],
                          {("weights.primary_zero", "mse")}),
    "WeightChanged": (D.WeightChanged, steps(10) + steps(5, start=10, weights={"mse": 1.0, "reg": 0.7},
                                                          weight_sources={"reg": "schedule"}),
                      {("weights.changed", "reg")}),
    # the value moves while the recorded source stays "config": nobody owns the change
    "UnplannedWeightChange": (D.UnplannedWeightChange,
                              steps(10, weight_sources=SOURCES) + steps(5, start=10, weights={"mse": 1.0, "reg": 0.7},
                                                                        weight_sources=SOURCES),
                              {("weights.unplanned_change", "reg")}),
    "NonFiniteGrad": (D.NonFiniteGrad, steps(3) + [with_grad(healthy_step(3), encoder=math.nan, _total=math.nan)],
                      {("grad.nonfinite", "encoder")}),
    "ZeroGrad": (D.ZeroGrad, [with_grad(r, head=0.0) for r in steps(6)], {("grad.zero", "head")}),
    "VanishingGrad": (D.VanishingGrad, [with_grad(r, encoder=1e-9) for r in steps(6)],
                      {("grad.vanishing", "encoder")}),
    "ExplodingGrad": (D.ExplodingGrad, steps(20) + [with_grad(healthy_step(20), head=900.0, _total=900.0)],
                      {("grad.exploding", "head")}),
    "FrozenParams": (D.FrozenParams, steps(6, update_norm={"encoder": 1e-3, "head": 0.0}),
                     {("param.frozen", "head")}),
    "UpdateRatio": (D.UpdateRatio, steps(25, update_norm={"encoder": 1e-7, "head": 1e-3}),
                    {("param.update_ratio", "encoder")}),
    # lr 1e-3 and a gradient of ~0.5, yet the encoder moves 3e-8 of its norm (a clip to ~0)
    "BlockedUpdate": (D.BlockedUpdate, steps(6, update_norm={"encoder": 1e-7, "head": 1e-3}),
                      {("param.update_blocked", "encoder")}),
    "InvalidLR": (D.InvalidLR, [healthy_step(0, lr=[-1e-3, 1e-3])], {("lr.invalid", "group0")}),
    "ZeroLR": (D.ZeroLR, steps(3, lr=[0.0, 1e-3]), {("lr.zero", "group0")}),
    "TinyLR": (D.TinyLR, steps(12, lr=[1e-3, 2e-8]), {("lr.tiny", "group1")}),
    "SkippedSteps": (D.SkippedSteps, [healthy_step(i, steps_taken=0) for i in range(25)],
                     {("steps.skipped", "optimizer")}),
    "AmpOverflow": (D.AmpOverflow, [healthy_step(i, amp={"scale": 1024.0, "found_inf": i % 2 == 0})
                                    for i in range(60)], {("amp.overflow", "grad_scaler")}),
    "AmpScaleCollapse": (D.AmpScaleCollapse, [healthy_step(0, amp={"scale": 0.25, "found_inf": True})],
                         {("amp.scale_collapse", "grad_scaler")}),
    "ValConstant": (D.ValConstant, [healthy_eval(e, loss=0.4321) for e in range(4)], {("val.constant", "val")}),
    "ValPlateau": (D.ValPlateau, HEALTHY_EVALS[:5] + [healthy_eval(e, loss=0.6) for e in range(5, 17)],
                   {("val.plateau", "val")}),
    "ValTrainGap": (D.ValTrainGap, [r for e in range(3) for r in (healthy_epoch(e, loss=0.01), healthy_eval(e, loss=1.2))],
                    {("val.train_gap", "val")}),
    "ChanceLevel": (lambda: D.ChanceLevel(num_classes=10),
                    [healthy_eval(e, loss=math.log(10) + 0.01) for e in range(4)], {("loss.chance_level", "val")}),
    "CollapsedPredictions": (D.CollapsedPredictions,
                             [healthy_eval(e, metrics={"pred_top_share": 0.99}) for e in range(4)],
                             {("output.collapsed", "pred_top_share")}),
    "SaturatedOutputs": (D.SaturatedOutputs, steps(4, metrics={"range_at_bound": 0.28}),
                         {("output.saturated", "range")}),
    "ExpectedRange": (lambda: D.ExpectedRange("loss", 0.0, 10.0, first_steps=1), [healthy_step(0, loss=1e25)],
                      {("value.out_of_range", "loss")}),
}

# detectors that need a live model are tested below with one
LIVE_ONLY = {"NoneGrad", "NotInOptimizer", "DeadUnits", "WeightDecay"}


def all_detector_classes():
    return {name for name, obj in vars(D).items()
            if inspect.isclass(obj) and issubclass(obj, D.Detector) and obj is not D.Detector}


def test_every_detector_has_a_fault_test():
    assert all_detector_classes() == set(FAULTS) | LIVE_ONLY


# Codes with an emitter other than a detector: the monitor reports on itself (a detector
# that failed, the closing summary), `healthcheck watch` on the files it reads (a line that
# is not a record), and a failed preflight check of the gate becomes `preflight.<check>`
# when its verdict goes through a monitor (the detection benchmark does that).
NOT_FROM_DETECTORS = ("monitor.", "watch.", "preflight.")


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


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_fires_with_code_and_place(name):
    factory, records, expected = FAULTS[name]
    events = run(factory(), records)
    assert expected <= codes_where(events), [e.line() for e in events]
    for e in events:
        assert e.code in factory().codes
        assert e.hint == CODES[e.code].fix and e.title


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_healthy_run_is_silent(name):
    factory, _, _ = FAULTS[name]
    assert run(factory(), HEALTHY) == []


# -- finer points of single detectors ---------------------------------------------------
def test_nonfinite_loss_names_total_only_when_terms_are_finite():
    events = run(D.NonFiniteLoss(), [healthy_step(0, loss=math.inf)])
    assert codes_where(events) == {("loss.nonfinite", "total")}
    events = run(D.NonFiniteLoss(), [healthy_eval(0, loss=math.nan)])
    assert codes_where(events) == {("loss.nonfinite", "val/total")}


def test_zero_loss_defers_to_primary_weight_when_every_weight_is_zero():
    assert run(D.ZeroLoss(), [healthy_step(0, loss=0.0, weights={"mse": 0.0, "reg": 0.0})]) == []
    # no weights recorded: a zero total only contradicts non-zero terms
    assert run(D.ZeroLoss(), [healthy_step(0, loss=0.0, weights={}, terms={})]) == []
    assert run(D.ZeroLoss(), [healthy_step(0, loss=0.0, weights={})]) != []


def test_dead_term_ignores_zero_weight_terms():
    recs = [healthy_step(i, terms={"mse": 1.0, "reg": 0.0}, weights={"mse": 1.0, "reg": 0.0}) for i in range(20)]
    assert run(D.DeadTerm(), recs) == []


def test_primary_share_evidence_is_the_weighted_share():
    rec = healthy_step(0, weights={"mse": 1e-3, "reg": 10.0})
    (event,) = run(D.PrimaryShare(patience=1), [rec])
    wm, wr = 1e-3 * abs(rec.terms["mse"]), 10.0 * abs(rec.terms["reg"])
    assert event.evidence["share"] == pytest.approx(wm / (wm + wr))


def test_divergence_ignores_single_spikes():
    recs = [healthy_step(i, loss=20 * healthy_step(i).loss) if i % 25 == 24 else healthy_step(i) for i in range(200)]
    assert run(D.Divergence(), recs) == []


def test_primary_weight_zero_fires_on_the_first_record_and_when_missing():
    events = run(D.PrimaryWeightZero(), [healthy_step(0, weights={"reg": 0.1})])
    assert codes_where(events) == {("weights.primary_zero", "mse")}
    assert events[0].severity is Severity.CRITICAL and events[0].step == 0


def test_weight_change_records_old_new_and_source():
    _, records, _ = FAULTS["WeightChanged"]
    (event,) = run(D.WeightChanged(), records)
    assert (event.evidence["old"], event.evidence["new"], event.step) == (0.1, 0.7, 10)
    assert "schedule" in event.title


def test_nonfinite_grad_defers_to_the_amp_scaler():
    rec = with_grad(healthy_step(0, amp={"scale": 1024.0, "found_inf": True}), encoder=math.inf)
    assert run(D.NonFiniteGrad(), [rec]) == []


def test_vanishing_first_to_last_ratio():
    recs = [with_grad(r, encoder=1e-5, head=1.0) for r in steps(6)]
    events = run(D.VanishingGrad(), recs)
    assert ("grad.vanishing", "encoder") in codes_where(events)
    assert any(e.evidence.get("ratio") == pytest.approx(1e-5) for e in events)


def test_exploding_first_to_last_ratio():
    recs = [with_grad(r, encoder=2000.0, head=1.0) for r in steps(6)]
    assert ("grad.exploding", "encoder") in codes_where(run(D.ExplodingGrad(), recs))


def test_frozen_ignores_skipped_steps():
    recs = steps(10, update_norm={"encoder": 0.0, "head": 0.0}, skipped=True)
    assert run(D.FrozenParams(), recs) == []


def test_update_ratio_too_large():
    recs = steps(25, update_norm={"encoder": 1e-3, "head": 3.0})
    events = run(D.UpdateRatio(), recs)
    assert ("param.update_ratio", "head") in codes_where(events)
    assert events[0].evidence["ratio"] == pytest.approx(3.0 / 1.5)


def test_zero_lr_for_one_warmup_step_is_silent():
    recs = [healthy_step(0, lr=[0.0, 0.0])] + steps(10, start=1)
    assert run(D.ZeroLR(), recs) == []


def test_skipped_steps_partial_is_warning_none_is_error():
    none = run(D.SkippedSteps(), FAULTS["SkippedSteps"][1])
    assert {e.severity for e in none} == {Severity.ERROR}
    partial = [healthy_step(i, steps_taken=1 + i // 3) for i in range(30)]  # one step in three
    events = run(D.SkippedSteps(), partial)
    assert events and {e.severity for e in events} == {Severity.WARNING}
    accumulated = [healthy_step(i, steps_taken=(i + 1) // 4) for i in range(40)]
    assert run(D.SkippedSteps(accumulation=4), accumulated) == []


def test_skipped_steps_from_flags_without_counters():
    recs = [healthy_step(i, steps_taken=None, batches_seen=None, skipped=True) for i in range(25)]
    assert codes_where(run(D.SkippedSteps(), recs)) == {("steps.skipped", "optimizer")}


def test_amp_occasional_overflow_is_silent():
    recs = [healthy_step(i, amp={"scale": 2.0 ** 16, "found_inf": i == 3}) for i in range(100)]
    assert run(D.AmpOverflow(), recs) == []


def test_expected_range_on_a_metric_and_only_first_steps():
    det = D.ExpectedRange("cov_norm_ratio", 0.1, 10.0)
    events = run(det, [healthy_step(0, metrics={"cov_norm_ratio": 1.0}), healthy_step(1, metrics={"cov_norm_ratio": 2e-6})])
    assert [(e.code, e.where, e.step) for e in events] == [("value.out_of_range", "cov_norm_ratio", 1)]
    late = [healthy_step(0), healthy_step(1, loss=1e25)]
    assert run(D.ExpectedRange("loss", high=10.0, first_steps=1), late) == []
    with pytest.raises(ValueError, match="low=5.0 and high=1.0"):
        D.ExpectedRange("loss", 5.0, 1.0)


def test_val_plateau_needs_patience():
    recs = HEALTHY_EVALS[:5] + [healthy_eval(e, loss=0.6) for e in range(5, 12)]
    assert run(D.ValPlateau(), recs) == []


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


# -- live-view detectors with a real model -----------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x, mode="ok"):
        h = self.encoder(x)
        if mode == "detached_head":
            return self.head(h).detach() + h.sum(dim=1, keepdim=True)
        if mode == "clamped":
            return torch.clamp(self.head(h), min=1e6) + h.sum(dim=1, keepdim=True)
        return self.head(h)


def live_steps(det, mode, n=6, optimizer_params=None):
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters() if optimizer_params is None else optimizer_params(net), lr=0.1)
    live = LiveView(net, opt)
    state, events = det.new_state(), []
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        net(torch.randn(5, 4), mode).pow(2).mean().backward()
        live.begin("after_backward", i)
        events.extend(det.check(healthy_step(i), state, live))
    return events


def test_none_grad_names_the_detached_module():
    events = live_steps(D.NoneGrad(), "detached_head")
    assert codes_where(events) == {("grad.none", "head")}
    assert "head.weight" in events[0].detail and "head.bias" in events[0].detail
    assert live_steps(D.NoneGrad(), "ok") == []


def test_zero_grad_live_names_the_clamped_module():
    events = live_steps(D.ZeroGrad(), "clamped")
    assert codes_where(events) == {("grad.zero", "head")}
    assert live_steps(D.ZeroGrad(), "ok") == []


def test_not_in_optimizer_fires_once_at_start():
    events = live_steps(D.NotInOptimizer(), "ok", optimizer_params=lambda net: net.encoder.parameters())
    assert codes_where(events) == {("param.not_in_optimizer", "head")}
    assert len(events) == 1 and events[0].step == 0
    assert events[0].evidence["numel"] == 8 + 1
    assert live_steps(D.NotInOptimizer(), "ok") == []


def test_nonfinite_grad_live_lists_parameters():
    net = Net()
    net(torch.randn(3, 4)).sum().backward()
    net.head.weight.grad[0, 0] = math.nan
    live = LiveView(net, None)
    live.begin("after_backward", 0)
    rec = healthy_step(0, grad_norm={})  # not measured: the live view decides
    events = D.NonFiniteGrad().check(rec, D.NonFiniteGrad().new_state(), live)
    assert codes_where(events) == {("grad.nonfinite", "head")}
    assert "head.weight" in events[0].detail and "head.bias" not in events[0].detail


def test_live_grad_stats_are_computed_once_per_phase():
    net = Net()
    net(torch.randn(3, 4)).sum().backward()
    live = LiveView(net, None)
    live.begin("after_backward", 0)
    first = live.param_grad_stats()
    assert live.param_grad_stats() is first
    live.begin("after_step", 0)
    assert live.param_grad_stats() is not first
    expected = [p.grad.norm().item() for _, p in net.named_parameters()]
    assert list(first.norms) == pytest.approx(expected, rel=1e-6)


# -- detectors added for the detection benchmark's misses --------------------------------
def test_tiny_lr_is_an_error_only_when_it_never_was_larger():
    (first, *_) = run(D.TinyLR(), steps(12, lr=[1e-3, 2e-8]))
    assert first.severity is Severity.ERROR and first.where == "group1" and first.step == 9
    # a warm-up that starts at 0 and stays tiny never had a usable rate either
    never = [healthy_step(0, lr=[1e-3, 0.0])] + steps(12, start=1, lr=[1e-3, 2e-8])
    assert {e.severity for e in run(D.TinyLR(), never)} == {Severity.ERROR}
    # a schedule that decayed below min_lr at the end is a warning
    decayed = steps(30) + steps(12, start=30, lr=[1e-3, 2e-8])
    events = run(D.TinyLR(), decayed)
    assert events and {e.severity for e in events} == {Severity.WARNING}


def test_unplanned_change_stays_quiet_for_changes_with_a_new_source():
    planned = steps(10, weight_sources=SOURCES) + steps(
        5, start=10, weights={"mse": 1.0, "reg": 0.7}, weight_sources={"mse": "config", "reg": "schedule:phase 0"})
    assert run(D.UnplannedWeightChange(), planned) == []
    assert codes_where(run(D.WeightChanged(), planned)) == {("weights.changed", "reg")}  # still recorded
    # one event at the change, evidence old and new; unmeasured sources are not judged
    (event,) = run(D.UnplannedWeightChange(), FAULTS["UnplannedWeightChange"][1])
    assert (event.step, event.evidence["old"], event.evidence["new"]) == (10, 0.1, 0.7)
    assert event.severity is Severity.ERROR
    no_sources = steps(10) + steps(5, start=10, weights={"mse": 1.0, "reg": 0.7})
    assert run(D.UnplannedWeightChange(), no_sources) == []
    # a per-step ramp whose owner keeps one source string is declared as owned
    ramp = [healthy_step(i, weights={"mse": 1.0, "reg": 0.01 * i}, weight_sources={"mse": "config", "reg": "ramp"})
            for i in range(10)]
    assert len(run(D.UnplannedWeightChange(), ramp)) == 9
    assert run(D.UnplannedWeightChange(owned=("ramp",)), ramp) == []


def test_update_ratio_far_too_large_is_an_error_after_five_steps():
    # ‖Δθ‖/‖θ‖ = 1/3 per step: each step replaces a third of the encoder's weights
    events = run(D.UpdateRatio(), steps(6, update_norm={"encoder": 1.0, "head": 1e-3}))
    assert [(e.where, e.step, e.severity) for e in events] == [("encoder", 4, Severity.ERROR),
                                                               ("encoder", 5, Severity.ERROR)]
    assert events[0].evidence["ratio"] == pytest.approx(1.0 / 3.0)
    # 0.1 per step is large but below the error bound: only the 20-step warning could fire
    assert run(D.UpdateRatio(), steps(10, update_norm={"encoder": 0.3, "head": 1e-3})) == []


def test_blocked_update_needs_a_usable_lr_and_gradient():
    blocked = {"encoder": 1e-7, "head": 1e-3}
    assert run(D.BlockedUpdate(), steps(6, update_norm=blocked, lr=[1e-6, 1e-6])) == []  # lr.tiny's case
    zero_grad = [with_grad(r, encoder=0.0) for r in steps(6, update_norm=blocked)]
    assert run(D.BlockedUpdate(), zero_grad) == []  # nothing to apply
    # plain SGD with a small gradient: the update is exactly lr x ‖g‖, nothing is blocked
    sgd = [with_grad(r, encoder=1e-4) for r in steps(6, update_norm={"encoder": 1e-3 * 1e-4, "head": 1e-3})]
    assert run(D.BlockedUpdate(), sgd) == []
    assert run(D.BlockedUpdate(), steps(4, update_norm=blocked)) == []  # patience 5


def test_val_train_gap_needs_two_evaluations_and_positive_losses():
    pairs = lambda losses: [r for e, (t, v) in enumerate(losses) for r in (healthy_epoch(e, loss=t),
                                                                           healthy_eval(e, loss=v))]
    assert run(D.ValTrainGap(), pairs([(0.01, 1.2), (0.5, 0.55), (0.01, 1.2)])) == []  # never twice in a row
    (event,) = run(D.ValTrainGap(), pairs([(0.5, 0.6), (0.01, 1.2), (0.01, 1.3)]))
    assert event.step == healthy_eval(2).step and event.evidence["ratio"] == pytest.approx(130.0)
    assert run(D.ValTrainGap(), pairs([(-2.0, 1.0), (-2.0, 1.0), (-2.0, 1.0)])) == []  # log-likelihoods


def test_skipped_steps_no_step_at_all_fires_at_the_second_batch():
    events = run(D.SkippedSteps(), [healthy_step(i, steps_taken=0) for i in range(3)])
    assert [(e.step, e.severity) for e in events] == [(1, Severity.ERROR), (2, Severity.ERROR)]
    # under AMP the scaler may skip its first steps: left to the window and the amp checks
    amp = [healthy_step(i, steps_taken=0, amp={"scale": 2.0 ** (15 - i), "found_inf": True}) for i in range(5)]
    assert run(D.SkippedSteps(), amp) == []
    accumulated = [healthy_step(i, steps_taken=(i + 1) // 4) for i in range(8)]
    assert run(D.SkippedSteps(accumulation=4), accumulated) == []


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


class Mlp(nn.Module):
    """Linear -> ReLU -> Linear; ``shift`` moves chosen hidden pre-activations far below 0."""

    def __init__(self, vocab=None):
        super().__init__()
        self.embed = nn.Embedding(vocab, 4) if vocab else None
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)
        self.shift = torch.zeros(8)

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)
        return self.out(torch.relu(self.hidden(x) - self.shift))


def dead_unit_events(net, inputs, n=4):
    det = D.DeadUnits()
    live = LiveView(net, None)
    state, events = det.new_state(), []
    for i in range(n):
        net.zero_grad(set_to_none=True)
        net(inputs()).pow(2).mean().backward()
        live.begin("after_backward", i)
        events.extend(det.check(healthy_step(i), state, live))
    return events


def test_dead_units_names_the_layer_whose_units_died():
    torch.manual_seed(0)
    net = Mlp()
    net.shift[:5] = 100.0  # 5 of 8 hidden units never activate: their rows get no gradient
    events = dead_unit_events(net, lambda: torch.randn(16, 4))
    assert codes_where(events) == {("grad.dead_units", "hidden")}
    assert [e.step for e in events] == [2, 3]  # the third step in a row
    assert events[0].evidence["fraction"] == pytest.approx(5 / 8) and events[0].evidence["rows"] == 8
    net.shift[:5] = 0.0
    net.shift[:3] = 100.0  # 3 of 8 dead: below half
    assert dead_unit_events(net, lambda: torch.randn(16, 4)) == []


class NoBiasMlp(Mlp):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 8, bias=False)


def test_dead_units_reads_weight_rows_where_the_layer_has_no_bias():
    torch.manual_seed(0)
    net = NoBiasMlp()
    net.shift[:6] = 100.0
    events = dead_unit_events(net, lambda: torch.randn(16, 4))
    assert codes_where(events) == {("grad.dead_units", "hidden")}
    assert events[0].evidence["fraction"] == pytest.approx(6 / 8)


def test_dead_units_ignores_a_layer_whose_input_is_zero_but_units_are_alive():
    # every row of out.weight is 0 (its input is 0), yet out's units pass gradient back
    torch.manual_seed(0)
    net = Mlp()
    net.shift[:] = 100.0  # all hidden units dead: hidden fires, out (zero input) must not
    events = dead_unit_events(net, lambda: torch.randn(16, 4))
    assert codes_where(events) == {("grad.dead_units", "hidden")}


def test_dead_units_healthy_net_and_embedding_rows_are_silent():
    torch.manual_seed(0)
    assert dead_unit_events(Mlp(), lambda: torch.randn(16, 4)) == []
    # a batch touches 2 of 50 tokens: 96 % of the table's rows get no gradient, by design
    net = Mlp(vocab=50)
    assert dead_unit_events(net, lambda: torch.tensor([3, 7] * 8)) == []


def weight_decay_events(optimizer, scheduler=None):
    net = Net()
    live = LiveView(net, optimizer(net))
    if scheduler is not None:
        scheduler(live.optimizer)
    det = D.WeightDecay()
    return list(det.check(healthy_step(0), det.new_state(), live))


def test_weight_decay_times_lr_too_large_fires_on_the_group():
    events = weight_decay_events(lambda net: torch.optim.AdamW(
        [{"params": net.encoder.parameters(), "weight_decay": 200.0},
         {"params": net.head.parameters(), "weight_decay": 0.0}], lr=1e-3))
    assert codes_where(events) == {("optim.weight_decay", "group0")}
    assert events[0].evidence["product"] == pytest.approx(0.2)
    # a warm-up from 1 % of the peak lr does not hide a product of 1 at the peak
    warm = weight_decay_events(lambda net: torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e3),
                               lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.01))
    assert codes_where(warm) == {("optim.weight_decay", "group0")} and warm[0].evidence["lr"] == pytest.approx(1e-3)


def test_weight_decay_usual_settings_are_silent():
    assert weight_decay_events(lambda net: torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)) == []
    assert weight_decay_events(lambda net: torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=5e-4)) == []


def test_frozen_with_gradient_and_lr_fires_after_two_applied_steps():
    # head has a gradient (~0.8) and lr 1e-3 > 0, yet its update is exactly 0: a step doing nothing
    events = run(D.FrozenParams(), steps(3, update_norm={"encoder": 1e-3, "head": 0.0}))
    assert [(e.where, e.step) for e in events] == [("head", 1), ("head", 2)]
    # without a gradient (an unused module) it waits the longer patience, like grad.none
    idle = [with_grad(r, head=0.0) for r in steps(3, update_norm={"encoder": 1e-3, "head": 0.0})]
    assert [(e.where, e.step) for e in run(D.FrozenParams(), idle)] == [("head", 2)]
    # lr 0 (a warm-up's first step, twice) is lr.zero's finding; here it is the longer patience too
    zero_lr = steps(2, update_norm={"encoder": 0.0, "head": 0.0}, lr=[0.0, 0.0])
    assert run(D.FrozenParams(), zero_lr) == []

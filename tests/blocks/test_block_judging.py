"""Judging metrics lines in blocks must say exactly what judging them one by one says.

`Monitor.observe_block` skips the rows a detector's screen passes over; these tests run
both paths on the same lines, healthy and with faults of every kind the stream
detectors know, cut into blocks at arbitrary places, and compare every emitted event.
"""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthcheck.blocks.columns import MetricBlock
from healthcheck.blocks.typed import StructBlock
from healthcheck.detectors import ConstantLoss, ExplodingGrad, SaturatedOutputs, ValConstant
from healthcheck.monitor import Monitor
from healthcheck.record import StepRecord
from healthcheck.watch import stream_detectors
from healthcheck.watch.reading import LineLayout

MODULES = ("encoder", "trunk", "head")


def healthy_line(i: int, rng: random.Random) -> dict:
    cov = 1.0 / (1.0 + 0.01 * i) + 0.01 * rng.random()
    sub = 0.5 * cov + 0.01 * rng.random()
    g = {m: 0.5 + 0.1 * rng.random() for m in MODULES}
    return {"schema": 1, "kind": "step", "step": i, "epoch": i // 50, "time": 1000.0 + i, "rank": 0,
            "loss": cov + 0.1 * sub, "terms": {"cov": cov, "subspace": sub},
            "weights": {"cov": 1.0, "subspace": 0.1}, "weight_sources": {"cov": "preset", "subspace": "preset"},
            "primary": "cov", "lr": [1e-3, 5e-4],
            "grad_norm": {"_total": sum(g.values()), **g},
            "update_norm": {m: 1e-3 * (1 + rng.random()) for m in MODULES},
            "param_norm": {m: 2.0 + rng.random() for m in MODULES},
            "steps_taken": i + 1, "batches_seen": i + 1, "skipped": False}


def _nan_loss(line, k):
    line["loss"] = math.nan


def _nan_term(line, k):
    line["terms"]["subspace"] = math.inf


def _zero_loss(line, k):
    line["loss"] = 0.0


def _dead_term(line, k):
    line["terms"]["subspace"] = 0.0


def _primary_zero(line, k):
    line["weights"]["cov"] = 0.0


def _weight_change(line, k):
    line["weights"]["subspace"] = 0.5


def _weight_change_sourced(line, k):
    line["weights"]["subspace"] = 0.7
    line["weight_sources"]["subspace"] = "schedule"


def _small_share(line, k):
    line["weights"]["subspace"] = 1e4


def _constant_loss(line, k):
    line["loss"] = 0.75


def _diverging(line, k):
    line["loss"] = 1e3 * (1 + k)


def _grad_zero(line, k):
    line["grad_norm"]["trunk"] = 0.0


def _grad_nan(line, k):
    line["grad_norm"]["head"] = math.nan


def _grad_vanishing(line, k):
    line["grad_norm"]["encoder"] = 1e-9


def _grad_first_small(line, k):
    line["grad_norm"]["encoder"] = 1e-5


def _grad_jump(line, k):
    line["grad_norm"]["head"] = 1e4


def _grad_first_big(line, k):
    line["grad_norm"]["encoder"] = 1e4


def _lr_zero(line, k):
    line["lr"][1] = 0.0


def _lr_tiny(line, k):
    line["lr"] = [1e-12, 1e-12]


def _lr_invalid(line, k):
    line["lr"][0] = -1.0


def _frozen(line, k):
    line["update_norm"]["trunk"] = 0.0


def _update_big(line, k):
    line["update_norm"]["head"] = 10.0


def _update_tiny(line, k):
    line["update_norm"]["head"] = 1e-12


def _skipped(line, k):
    line["skipped"] = True


def _missing_loss(line, k):
    line.pop("loss", None)


def _odd_value(line, k):
    line["grad_norm"]["trunk"] = "n/a"


def _missing_module(line, k):
    line["update_norm"].pop("head", None)


def _eval_line(line, k):
    line["kind"] = "eval"
    line["loss"] = 0.5


# -- mixed precision: an "amp" field on the lines of the fault (the "amp" base puts one on every line)
def _amp_overflow(line, k):
    line.setdefault("amp", {"scale": 65536.0, "found_inf": False})["found_inf"] = True


def _amp_flag_text(line, k):
    line.setdefault("amp", {"scale": 65536.0, "found_inf": False})["found_inf"] = "0"  # truthy


def _amp_scale_collapse(line, k):
    line.setdefault("amp", {"scale": 65536.0, "found_inf": False})["scale"] = 2.0 ** -(k + 1)


def _amp_null(line, k):
    line["amp"] = None


# -- output saturation (SaturatedOutputs reads metrics keys ending in "_at_bound")
def _saturated(line, k):
    line.setdefault("metrics", {})["head_at_bound"] = 0.5


def _saturation_nan(line, k):
    line.setdefault("metrics", {})["head_at_bound"] = math.nan


# -- step counters
def _stalled(line, k):
    line["steps_taken"] -= k + 1  # no step applied from the fault's first line on


def _counters_missing(line, k):
    line.pop("steps_taken", None)
    line.pop("batches_seen", None)


def _skipped_text(line, k):
    line["skipped"] = "0"  # a non-empty string: skipped, as bool() reads it


def _skipped_nan(line, k):
    line["skipped"] = math.nan


# -- other kinds of line among the steps
def _epoch_line(line, k):
    line["kind"] = "epoch"
    line["loss"] = 0.6


def _eval_metrics(line, k):
    line["kind"] = "eval"
    line["loss"] = 0.5 + 1e-3 * k
    line["metrics"] = {"val_acc": 0.9, "pred_top_share": 0.99, "head_at_bound": 0.3}


# -- fields missing, renamed or reordered
def _no_weights(line, k):
    line.pop("weights", None)
    line.pop("weight_sources", None)


def _no_terms(line, k):
    line.pop("terms", None)


def _primary_changes(line, k):
    line["primary"] = "subspace"


def _primary_list(line, k):
    line["primary"] = ["cov"]


def _source_changes(line, k):
    line["weight_sources"]["subspace"] = "hpo"


def _extra_weight(line, k):
    line["weights"]["aux"] = 0.3  # a term weighted for a while, then gone again


def _grad_order(line, k):
    line["grad_norm"] = dict(reversed(line["grad_norm"].items()))


def _total_only(line, k):
    line["grad_norm"] = {"_total": line["grad_norm"]["_total"]}


def _total_zero(line, k):
    line["grad_norm"]["_total"] = 0.0


# -- values of other JSON types
def _values_text(line, k):
    line["loss"] = str(line["loss"])
    line["terms"]["cov"] = str(line["terms"]["cov"])


def _values_bool(line, k):
    line["loss"] = True
    line["update_norm"]["head"] = False


def _values_null(line, k):
    line["loss"] = None
    line["grad_norm"]["trunk"] = None
    line["lr"] = None


def _lr_scalar(line, k):
    line["lr"] = 1e-3


def _huge_step(line, k):
    line["step"] = 2 ** 63 + k  # a JSON integer beyond int64: a record holds it as a Python int


def _huge_value(line, k):
    line["terms"]["subspace"] = 10 ** 400  # json reads it as an int no float can hold: a bad line


FAULTS = {f.__name__[1:]: f for f in (
    _nan_loss, _nan_term, _zero_loss, _dead_term, _primary_zero, _weight_change, _weight_change_sourced,
    _small_share, _constant_loss, _diverging, _grad_zero, _grad_nan, _grad_vanishing, _grad_first_small,
    _grad_jump, _grad_first_big, _lr_zero, _lr_tiny, _lr_invalid, _frozen, _update_big, _update_tiny,
    _skipped, _missing_loss, _odd_value, _missing_module, _eval_line,
    _amp_overflow, _amp_flag_text, _amp_scale_collapse, _amp_null, _saturated, _saturation_nan,
    _stalled, _counters_missing, _skipped_text, _skipped_nan, _epoch_line, _eval_metrics,
    _no_weights, _no_terms, _primary_changes, _primary_list, _source_changes, _extra_weight,
    _grad_order, _total_only, _total_zero, _values_text, _values_bool, _values_null, _lr_scalar,
    _huge_step, _huge_value)}


# -- what every line of a run carries besides the healthy fields
def _amp_base(line, i):
    line["amp"] = {"scale": 65536.0, "found_inf": False}


def _saturation_base(line, i):
    line["metrics"] = {"head_at_bound": 0.05}


BASES = {"plain": None, "amp": _amp_base, "saturation": _saturation_base}


def make_lines(n: int, faults: list[tuple[str, int, int]], seed: int = 0, base: str = "plain",
               interleave: int = 0) -> list[dict]:
    """``interleave``: after every that many steps, an epoch line and an eval line that
    repeat the step's counters and AMP state (as loggers that copy them onto every line do)."""
    rng = random.Random(seed)
    lines = [healthy_line(i, rng) for i in range(n)]
    if BASES[base] is not None:
        for i, line in enumerate(lines):
            BASES[base](line, i)
    for name, start, length in faults:
        for k, i in enumerate(range(start, min(n, start + length))):
            try:
                FAULTS[name](lines[i], k)
            except (KeyError, TypeError):  # an earlier fault removed or retyped the field
                pass
    if interleave:
        lines = [out for i, line in enumerate(lines) for out in (
            [line, _other_kind(line, "epoch", 0.6), _other_kind(line, "eval", 0.5 + 1e-3 * (i % 7))]
            if i % interleave == interleave - 1 else [line])]
    return lines


def _other_kind(step: dict, kind: str, loss: float) -> dict:
    keep = ("schema", "step", "epoch", "time", "rank", "steps_taken", "batches_seen", "amp")
    return {**{k: copy.deepcopy(step[k]) for k in keep if k in step}, "kind": kind, "loss": loss}


def one_by_one(lines: list[dict], every=1) -> tuple[list[tuple], list[tuple]]:
    monitor = Monitor(stream_detectors(), source="watch", every=every)
    emitted = []
    for line in copy.deepcopy(lines):
        try:
            record = StepRecord.from_metrics_line(line)
        except (TypeError, ValueError, OverflowError):  # what watch reports as a bad line
            continue
        emitted += monitor.observe_record(record)
    return _keys(emitted), _keys(monitor.findings())


def in_blocks(lines: list[dict], cuts: list[int], every=1, as_watch: bool = False) -> tuple[list[tuple], list[tuple]]:
    """``as_watch``: every column built first (`MetricBlock.irregular_rows`), as watch does
    to drop bad lines, instead of as the screens ask for them."""
    monitor = Monitor(stream_detectors(), source="watch", every=every)
    emitted, start = [], 0
    for end in sorted({*cuts, len(lines)}):
        if end > start:
            block = MetricBlock(copy.deepcopy(lines[start:end]))
            if as_watch:
                block.irregular_rows()
            emitted += monitor.observe_block(block)
            start = end
    return _keys(emitted), _keys(monitor.findings())


def in_reads(lines: list[dict], read_size: int, every=1) -> tuple[list[tuple], list[tuple], int]:
    """As watch reads metrics.jsonl: ``read_size`` lines a read, decoded into typed rows
    (`StructBlock`) when every line fits the shapes learned from earlier reads, else
    parsed as dicts (and learned from). Also returns how many lines went the typed way."""
    monitor = Monitor(stream_detectors(), source="watch", every=every)
    layout = LineLayout()
    emitted, typed = [], 0
    for start in range(0, len(lines), read_size):
        read = [json.dumps(line) for line in lines[start:start + read_size]]
        raw = "\n".join(read).encode()
        rows = layout.decode(raw, len(read))
        if rows is None:
            dicts = [json.loads(text) for text in read]
            layout.learn(dicts)
            block = MetricBlock(dicts)
        else:
            block = StructBlock(rows)
            typed += len(rows)
        block.irregular_rows()
        emitted += monitor.observe_block(block)
    return _keys(emitted), _keys(monitor.findings()), typed


def _keys(events) -> list[tuple]:
    return [(e.code, e.where, e.step, str(e.severity), e.count) for e in events]


@pytest.mark.parametrize("fault", sorted(set(FAULTS) - {"odd_value", "huge_value"}))
def test_each_fault_is_judged_the_same_in_blocks(fault):
    lines = make_lines(300, [(fault, 120, 40)])
    expected = one_by_one(lines)
    assert in_blocks(lines, [64, 121, 122, 200]) == expected
    assert in_blocks(lines, list(range(0, 300, 7)), as_watch=True) == expected


@pytest.mark.parametrize("base", sorted(set(BASES) - {"plain"}))
@pytest.mark.parametrize("fault", ["amp_overflow", "amp_flag_text", "amp_scale_collapse", "amp_null", "saturated",
                                   "saturation_nan", "stalled", "counters_missing", "skipped_text", "eval_metrics"])
def test_each_fault_on_lines_that_all_carry_the_field(base, fault):
    lines = make_lines(300, [(fault, 120, 40)], base=base)
    expected = one_by_one(lines)
    assert in_blocks(lines, [64, 121, 122, 200]) == expected
    assert in_blocks(lines, []) == expected  # no block starts near the fault


def test_a_primary_a_screen_cannot_look_up_is_judged_by_the_checks():
    # the record path's detectors fail on it (and say so); the screens must not crash
    lines = make_lines(100, [("primary_list", 0, 100)])
    emitted, _ = one_by_one(lines)
    assert {code for code, *_ in emitted} == {"monitor.detector_failed"}
    assert in_blocks(lines, [50]) == one_by_one(lines)


@pytest.mark.parametrize("fault", ["amp_overflow", "stalled", "weight_change", "saturated", "skipped"])
def test_epoch_and_eval_lines_between_steps_do_not_shorten_a_window(fault):
    # the epoch and eval lines repeat the step's counters and AMP state: nothing in them
    # is news, yet a window counted in lines instead of steps would end too early
    lines = make_lines(300, [(fault, 100, 15)], base="amp", interleave=1)
    assert in_blocks(lines, []) == one_by_one(lines)
    assert in_blocks(lines, [200, 201, 450], as_watch=True) == one_by_one(lines)


def test_a_stall_between_epoch_and_eval_lines_is_counted_in_steps():
    lines = make_lines(300, [])
    for i, line in enumerate(lines):  # 12 batches from step 120 on apply no step, then steps resume
        line["steps_taken"] = line["batches_seen"] - min(max(0, i - 119), 12)
    lines = [out for line in lines for out in (
        line, _other_kind(line, "epoch", 0.6), _other_kind(line, "eval", 0.5))]
    _, findings = one_by_one(lines)
    assert ("steps.skipped", 140, 11) in [(code, step, count) for code, _, step, _, count in findings]
    assert in_blocks(lines, []) == one_by_one(lines)


@pytest.mark.parametrize("every", [2, 3, {"WeightChanged": 2, "UnplannedWeightChange": 3},
                                   {"SkippedSteps": 2, "AmpOverflow": 2}])
@pytest.mark.parametrize("fault", ["weight_change", "weight_change_sourced", "stalled", "amp_overflow", "grad_zero"])
def test_a_monitor_that_checks_every_nth_step_agrees_in_blocks(every, fault):
    lines = make_lines(300, [(fault, 121, 30)], base="amp")
    assert in_blocks(lines, [64, 122, 200], every) == one_by_one(lines, every)


def test_a_detector_of_two_line_kinds_sees_them_in_file_order():
    # the validation/training gap compares each eval line with the epoch line before it:
    # judging all epoch lines of a block before its eval lines compared them with the last
    lines = make_lines(40, [], interleave=1)
    epochs = [line for line in lines if line["kind"] == "epoch"]
    for k, line in enumerate(epochs):
        line["loss"] = 0.01 if k % 2 else 10.0
    for line in lines:
        if line["kind"] == "eval":
            line["loss"] = 1.0 + 1e-3 * line["step"]  # ratio 0.1 after odd, 100 after even epochs
    emitted, _ = one_by_one(lines)
    assert "val.train_gap" not in {code for code, *_ in emitted}  # never two evals in a row
    assert in_blocks(lines, []) == one_by_one(lines)
    assert in_blocks(lines, [7, 30], as_watch=True) == one_by_one(lines)


def test_a_skipped_flag_is_read_by_its_truth_value():
    # "0" is a skipped step to the record path (bool("0")): the zero updates around it
    # are two applied steps apart, not two in a row
    lines = make_lines(300, [])
    lines[120]["update_norm"]["trunk"] = 0.0
    lines[122]["skipped"] = "0"
    lines[123]["update_norm"]["trunk"] = 0.0
    assert in_blocks(lines, []) == one_by_one(lines) == ([], [])


def test_a_weight_that_comes_and_goes_is_a_change_both_times():
    lines = make_lines(300, [("extra_weight", 150, 1)])
    emitted, _ = one_by_one(lines)
    assert [(code, where, step) for code, where, step, *_ in emitted] == [
        ("weights.changed", "aux", 150), ("weights.changed", "aux", 151)]
    assert in_blocks(lines, [64, 200]) == one_by_one(lines)


def test_a_line_with_a_number_no_float_holds_is_an_irregular_row_not_a_crash():
    lines = make_lines(50, [("huge_value", 20, 1), ("huge_step", 30, 1)])
    block = MetricBlock(lines)
    assert 20 in block.irregular_rows()
    with pytest.raises(OverflowError):  # the record path's verdict: watch reports a bad line
        block.record(20)
    good = [line for line in lines if _valid(line)]
    assert in_blocks(good, [10], as_watch=True) == one_by_one(lines)


def test_a_fault_the_screens_must_not_miss_is_found_at_all():
    # guard against two paths agreeing on nothing: the faults do fire
    emitted, _ = in_blocks(make_lines(300, [("zero_loss", 10, 1), ("grad_zero", 50, 10)]), [100])
    assert {"loss.zero", "grad.zero"} <= {code for code, *_ in emitted}


def test_a_healthy_run_is_silent_in_blocks():
    emitted, findings = in_blocks(make_lines(500, []), [128, 256])
    assert emitted == [] and findings == []


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 260),
       faults=st.lists(st.tuples(st.sampled_from(sorted(FAULTS)), st.integers(0, 250), st.integers(1, 60)),
                       max_size=4),
       cuts=st.lists(st.integers(0, 260), max_size=6), seed=st.integers(0, 3),
       base=st.sampled_from(sorted(BASES)), interleave=st.sampled_from([0, 0, 1, 7]),
       every=st.sampled_from([1, 1, 1, 2, {"WeightChanged": 3, "SkippedSteps": 2, "AmpOverflow": 2}]),
       as_watch=st.booleans())
def test_blocks_and_records_agree_on_any_mix_of_faults(n, faults, cuts, seed, base, interleave, every, as_watch):
    lines = make_lines(n, faults, seed, base, interleave)
    lines = [line for line in lines if _valid(line)]
    assert in_blocks(lines, cuts, every, as_watch) == one_by_one(lines, every)


def _valid(line: dict) -> bool:
    try:
        StepRecord.from_metrics_line(line)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


# -- typed rows: what watch judges once it has learned a run's line shapes
@pytest.mark.parametrize("fault", sorted(set(FAULTS) - {"odd_value", "huge_value"}))
def test_each_fault_is_judged_the_same_in_typed_rows(fault):
    lines = [line for line in make_lines(300, [(fault, 120, 40)], interleave=7) if _valid(line)]
    *verdict, typed = in_reads(lines, 16)
    assert verdict == list(one_by_one(lines))
    assert typed >= len(lines) // 2  # most reads did go the typed way


@pytest.mark.parametrize("base", sorted(BASES))
def test_a_fault_that_keeps_the_line_shape_is_found_in_typed_rows(base):
    # zero loss, zero gradients and a changed weight change values only: those reads stay
    # typed, so these findings come from typed blocks, not from a dict fallback
    lines = make_lines(400, [("zero_loss", 100, 1), ("grad_zero", 200, 10), ("weight_change", 300, 50)],
                       base=base, interleave=9)
    *verdict, typed = in_reads(lines, 32)
    assert typed == len(lines) - 32  # only the first read, before any shape was known
    assert {"loss.zero", "grad.zero", "weights.changed"} <= {code for code, *_ in verdict[0]}
    assert verdict == list(one_by_one(lines))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(20, 260),
       faults=st.lists(st.tuples(st.sampled_from(sorted(FAULTS)), st.integers(0, 250), st.integers(1, 60)),
                       max_size=4),
       read_size=st.integers(1, 64), seed=st.integers(0, 3), base=st.sampled_from(sorted(BASES)),
       interleave=st.sampled_from([0, 1, 7]),
       every=st.sampled_from([1, 1, 2, {"WeightChanged": 3, "SkippedSteps": 2, "AmpOverflow": 2}]))
def test_typed_rows_and_records_agree_on_any_mix_of_faults(n, faults, read_size, seed, base, interleave, every):
    lines = [line for line in make_lines(n, faults, seed, base, interleave) if _valid(line)]
    *verdict, _ = in_reads(lines, read_size, every)
    assert verdict == list(one_by_one(lines, every))


# -- found by review: each fails on the code before its fix
def _one_detector(detector_factory, lines) -> tuple[list, list]:
    """The same single detector line by line and as one block (every column built first,
    as watch does)."""
    keys = lambda events: [(e.code, e.where, e.step, e.count) for e in events]  # noqa: E731
    one = Monitor([detector_factory()], source="watch")
    by_line = [e for line in copy.deepcopy(lines) for e in one.observe_record(line)]
    whole = Monitor([detector_factory()], source="watch")
    block = MetricBlock(copy.deepcopy(lines))
    block.irregular_rows()
    return keys(by_line), keys(whole.observe_block(block))


def test_a_step_counter_below_one_is_no_step_taken_as_the_record_reads_it():
    lines = make_lines(40, [])
    for line in lines[:3]:
        line["steps_taken"] = 0.5  # int(0.5) == 0: no step applied in the first batches
    emitted, _ = one_by_one(lines)
    assert ("steps.skipped", "optimizer", 1, "error", 1) in emitted
    assert in_blocks(lines, []) == one_by_one(lines)
    assert list(in_reads(lines, 8)[:2]) == list(one_by_one(lines))


def test_a_wide_constant_loss_tolerance_is_judged_row_by_row():
    # 1.36 is far from the 0.6 before it, yet within rtol=0.5 of the run's reference 1.0
    lines = [{"kind": "step", "step": i, "loss": x} for i, x in enumerate([1.0, 0.6, 1.36, 1.2, 1.0])]
    by_line, in_block = _one_detector(lambda: ConstantLoss(window=5, rtol=0.5), lines)
    assert by_line == [("loss.constant", "total", 4, 1)] == in_block


def test_rows_a_column_marks_odd_while_being_built_are_judged_as_records():
    # a bool loss is 1.0 to the record, but a column holding "n/a" too marks it irregular
    lines = [{"kind": "eval", "step": i, "epoch": i, "loss": True} for i in range(6)]
    lines[4]["loss"] = "n/a"
    by_line, in_block = _one_detector(ValConstant, lines)
    assert by_line == [("val.constant", "val", 2, 1)] == in_block


def test_a_detector_with_a_screen_keeps_each_kind_of_line_to_itself():
    # the saturation streak is kept per kind: the step row that broke the step streak must
    # be replayed, not the eval row before it
    def line(i, kind, share):
        return {"kind": kind, "step": i, "epoch": 0, "loss": 1.0, "metrics": {"out_at_bound": share}}
    lines = [line(0, "step", 0.5), line(1, "step", 0.1), line(2, "eval", 0.1), line(3, "eval", 0.5),
             line(4, "step", 0.5)]
    by_line, in_block = _one_detector(lambda: SaturatedOutputs(patience=2), lines)
    assert by_line == [] == in_block


def test_eval_metrics_named_otherwise_than_the_epochs_are_found_in_typed_rows():
    lines = make_lines(120, [], interleave=5)
    for line in lines:
        if line["kind"] == "epoch":
            line["metrics"] = {"acc": 0.5}
        elif line["kind"] == "eval":
            line["metrics"] = {"acc": 0.5, "pred_top_share": 0.99}
    expected = one_by_one(lines)
    assert ("output.collapsed", "pred_top_share", 14, "warning", 1) in expected[0]
    assert list(in_reads(lines, 16)[:2]) == list(expected)


def test_a_negative_norm_does_not_pass_a_block_of_exploding_first_modules_as_quiet():
    # encoder/head = 5000 on every row, while largest/smallest is 5000/-1 < 0
    lines = make_lines(12, [])
    for line in lines[4:]:
        line["grad_norm"] = {"_total": 1.0, "encoder": 5000.0, "trunk": -1.0, "head": 1.0}
    def judge(cuts):
        monitor = Monitor([ExplodingGrad(patience=1)], source="watch")
        emitted, start = [], 0
        for end in [*cuts, len(lines)]:
            emitted += monitor.observe_block(MetricBlock(copy.deepcopy(lines[start:end])))
            start = end
        return [(e.code, e.step) for e in emitted], [(f.code, f.count) for f in monitor.findings()]
    monitor = Monitor([ExplodingGrad(patience=1)], source="watch")
    by_line = [(e.code, e.step) for line in copy.deepcopy(lines) for e in monitor.observe_record(line)]
    assert by_line[:1] == [("grad.exploding", 4)]
    assert judge([4, 8]) == (by_line, [(f.code, f.count) for f in monitor.findings()]) == judge([])


@pytest.mark.parametrize("losses, rtol", [
    ([3.3300000000000014, 2.664000000000001, 3.9960000000000018], 0.2),  # exactly rtol from the reference
    ([6 * 5e-324, 5 * 5e-324, 7 * 5e-324], 0.1),  # subnormal: rounding is not relative there
])
def test_a_constant_loss_at_the_edge_of_its_tolerance_is_judged_as_one_by_one(losses, rtol):
    lines = [{"kind": "step", "step": i, "loss": x} for i, x in enumerate(losses)]
    by_line, in_block = _one_detector(lambda: ConstantLoss(window=3, rtol=rtol), lines)
    assert by_line == [("loss.constant", "total", 2, 1)] == in_block

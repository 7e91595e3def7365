"""Typed decoding of metrics lines (`watch.reading.LineLayout`): used only where it is exact.

A read is decoded into typed rows only when every line has a shape learned before;
anything else goes the dict way, and `watch` must say the same either way.
"""

from __future__ import annotations

import json
import math

import pytest
from _runfiles import step_line

from healthcheck.blocks.typed import LineDicts, StructBlock
from healthcheck.watch import RunWatch
from healthcheck.watch.reading import JsonLinesTail, LineLayout, StructRows


def _read(lines: list[dict]) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode()


def _learned(lines: list[dict]) -> LineLayout:
    layout = LineLayout()
    layout.learn(lines)
    return layout


def test_a_read_of_learned_shapes_becomes_typed_rows_whose_lines_are_the_dicts_parsed():
    layout = _learned([step_line(0), {**step_line(1), "kind": "epoch"}])
    lines = [step_line(i) for i in range(2, 40)] + [{**step_line(40), "kind": "epoch"}]
    lines[5]["loss"] = 3  # an int where a float was: a number all the same, kept an int
    raw = _read(lines)
    rows = layout.decode(raw, len(lines))
    assert isinstance(rows, StructRows) and len(rows) == len(lines)
    block = StructBlock(rows)
    assert [block.lines[i] for i in range(len(lines))] == [json.loads(text) for text in raw.split(b"\n")]
    assert type(block.lines[5]["loss"]) is int
    assert block.kind.tolist() == [0] * 38 + [1]
    assert block.scalar("loss")[5] == 3.0


@pytest.mark.parametrize("change", [
    lambda line: line.update(extra=1),
    lambda line: line.pop("lr"),
    lambda line: line.update(loss="0.5"),
    lambda line: line.update(loss=None),
    lambda line: line.update(loss=True),
    lambda line: line["grad_norm"].update(new_module=0.1),
    lambda line: line["terms"].pop("subspace"),
    lambda line: line.update(kind="validation"),
    lambda line: line.pop("kind"),
])
def test_a_line_of_another_shape_sends_the_whole_read_the_dict_way(change):
    layout = _learned([step_line(0)])
    lines = [step_line(i) for i in range(1, 10)]
    change(lines[4])
    assert layout.decode(_read(lines), len(lines)) is None
    assert layout.refused == 1


@pytest.mark.parametrize("raw", [
    b'{"a": 1}\n\n{"a": 2}',  # a blank line: no row for it
    b'{"a": 1}{"a": 2}\n{"a": 3}',  # two objects on one line
    b'{"a": 1}{"a": 2}\n',  # two objects on one line and a blank one: as many objects as lines
    b'{"a": 1} \n{"a": 2}',  # anything after the object
    b'{"a": NaN}',  # what json writes for a NaN: not JSON
    b'{"a": 9223372036854775808}',  # an int beyond int64: the record path decides what it is
])
def test_lines_that_are_not_one_object_each_are_never_typed(raw):
    layout = _learned([{"kind": "step", "a": 0}])
    count = raw.count(b"\n") + 1
    assert layout.decode(raw.replace(b"{", b'{"kind": "step", ', -1), count) is None


def test_a_counter_that_turns_into_a_float_sends_its_read_the_dict_way():
    # the record reads counters as ints: a typed row's must be ints for its checks to hold
    layout = _learned([step_line(0)])
    lines = [step_line(i) for i in range(1, 6)]
    assert layout.decode(_read(lines), len(lines)) is not None
    lines[3]["steps_taken"] = 4.0
    assert layout.decode(_read(lines), len(lines)) is None


def test_each_dict_keeps_its_own_lines_key_order():
    # the first and last module of grad_norm are the network's ends: order is meaning
    layout = _learned([step_line(0)])
    lines = [step_line(i) for i in range(1, 6)]
    lines[2]["grad_norm"] = dict(reversed(lines[2]["grad_norm"].items()))
    rows = layout.decode(_read(lines), len(lines))
    assert rows is not None  # the same names: the decoder takes it
    dicts = LineDicts(rows.segments)
    assert list(dicts[2]["grad_norm"]) == ["head", "trunk", "_total"]
    assert list(dicts[3]["grad_norm"]) == ["_total", "trunk", "head"]


def test_a_new_shape_is_learned_from_the_read_that_did_not_fit(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [step_line(i) for i in range(600)]
    for line in lines[300:]:  # AMP switched on half way
        line["amp"] = {"scale": 1024.0, "found_inf": False}
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    layout = LineLayout()
    kinds = ["typed" if isinstance(items, StructRows) else "dicts"
             for items in JsonLinesTail(path, chunk_size=4096).poll_many(layout)]
    first_amp = kinds.index("dicts", 1)  # the read where the new key appears
    assert kinds[0] == "dicts" and set(kinds[1:first_amp]) == {"typed"}
    assert kinds[first_amp + 1:] and set(kinds[first_amp + 1:]) == {"typed"}
    assert kinds.count("dicts") == 2 and layout.active


def test_a_layout_whose_reads_keep_not_fitting_gives_up():
    layout = LineLayout(max_refused=2)
    for i in range(4):
        line = {**step_line(i), f"key{i}": 1}  # a new shape every read
        assert layout.decode(_read([line]), 1) is None
        layout.learn([line])
    assert not layout.active and layout.refused == 3
    assert layout.decode(_read([{**step_line(9), "key3": 1}]), 1) is None


def test_reads_that_fit_in_between_keep_the_layout_going():
    # a NaN now and then (a read the decoder refuses) must not switch typing off for good
    layout = LineLayout(max_refused=2)
    layout.learn([step_line(0)])
    for i in range(10):
        odd = {**step_line(i), "loss": None}
        assert layout.decode(_read([odd]), 1) is None
        assert layout.decode(_read([step_line(i)]), 1) is not None
    assert layout.active


def _run(tmp_path, lines: list[dict], name: str):
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def _verdict(run, typed: bool) -> dict:
    watch = RunWatch(run, typed=typed)
    watch.poll_all()
    out = watch.verdict()
    watch.close()
    out.pop("reader")
    return out


def test_watch_says_the_same_with_typed_rows_as_with_dicts(tmp_path):
    steps = [step_line(i) for i in range(9000)]  # ~5 MiB: several reads, most of them typed
    for line in steps[4000:4010]:  # the modules listed input-last, the input's gradient 1e4 x
        line["grad_norm"] = dict(reversed(line["grad_norm"].items()))
        line["grad_norm"]["head"] = 1e4 * line["grad_norm"]["trunk"]
    steps[6000]["loss"] = 0.0
    steps[7000]["terms"]["cov"] = math.nan  # a NaN: that read goes the dict way
    lines = []
    for line in steps:
        lines.append(line)
        if line["step"] % 100 == 99:
            lines.append({"schema": 1, "kind": "eval", "step": line["step"], "epoch": line["epoch"],
                          "time": line["time"], "rank": 0, "loss": 0.4, "metrics": {"rmse": 1.0}})
    run = _run(tmp_path, lines, "run")
    typed, dicts = _verdict(run, True), _verdict(run, False)
    assert typed == dicts
    assert {"grad.exploding", "loss.zero", "loss.nonfinite"} <= {e["code"] for e in typed["events"]}


@pytest.mark.parametrize("field, value", [
    ("steps_taken", math.nan), ("batches_seen", "abc"), ("steps_taken", [1]), ("steps_taken", "5.5"),
    ("lr", [10 ** 400, 1e-3]), ("loss", 10 ** 400), ("time", 10 ** 400),
], ids=["nan-counter", "text-counter", "list-counter", "decimal-text-counter", "huge-lr", "huge-loss",
        "huge-time"])
@pytest.mark.parametrize("typed", [True, False])
def test_a_line_no_record_can_hold_is_a_bad_line_not_a_crash(tmp_path, field, value, typed):
    lines = [step_line(i) for i in range(40)]
    lines[15][field] = value
    run = _run(tmp_path, lines, "run")
    watch = RunWatch(run, typed=typed)
    watch.poll_all()
    verdict = watch.verdict()
    assert verdict["reader"]["bad_lines"] == 1 and watch.state.lines == 40  # read, one of them bad
    assert [e["code"] for e in verdict["events"]] == ["watch.bad_line"]

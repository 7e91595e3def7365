"""A skipped line is reported at its own line of the file, however it was read.

Blank and non-JSON lines give no row, so a line that parses but is no valid record must
not be numbered by the rows parsed before it: it would be reported at another line, and
two bad lines could then fold into one finding while both are counted.
"""

from __future__ import annotations

import functools
import itertools
import json

import pytest
from _runfiles import append, step_line

from healthcheck.watch import RunWatch, numbered_reads
from healthcheck.watch.reading import JsonLinesTail, source, tail

TORN = '{"kind": "step", "step": 1, "lo'  # a writer killed mid-line, then another line after it


def _line(i: int, **change) -> str:
    return json.dumps({**step_line(i), **change}) + "\n"


def _bad_line_numbers(watch: RunWatch) -> list[int]:
    verdict = watch.verdict()
    found = sorted(e["evidence"]["line"] for e in verdict["events"] if e["code"] == "watch.bad_line")
    assert len(found) == verdict["reader"]["bad_lines"]  # one finding per bad line, none folded
    return found


def _poll_all(watch: RunWatch, max_lines: int | None) -> None:
    if max_lines is None:
        watch.poll_all()
        return
    watch.poll(max_lines=max_lines)
    while watch.catching_up:
        watch.poll(max_lines=max_lines)


@pytest.fixture(params=[None, 64], ids=["one-read", "64-byte-reads"])
def chunk_size(request, monkeypatch):
    """Reads of the whole file, or of less than a line each (lines split across reads)."""
    if request.param is not None:
        monkeypatch.setattr(source, "JsonLinesTail", functools.partial(JsonLinesTail, chunk_size=request.param))
    return request.param


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "plain"])
@pytest.mark.parametrize("max_lines", [None, 2])
def test_a_bad_record_after_a_blank_and_a_torn_line_is_reported_at_its_own_line(
        tmp_path, typed, max_lines, chunk_size):
    (tmp_path / "metrics.jsonl").write_text(
        _line(0) + "\n" + TORN + "\n" + _line(1) + _line(2, steps_taken="abc")
        + "".join(_line(i) for i in range(3, 20)))
    watch = RunWatch(tmp_path, typed=typed)
    _poll_all(watch, max_lines)
    # line 3 is not JSON; line 5 is JSON but its counter is text
    assert _bad_line_numbers(watch) == [3, 5]
    assert watch.state.lines == 20
    watch.close()


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "plain"])
@pytest.mark.parametrize("max_lines", [None, 3])
def test_line_numbers_hold_across_polls_of_a_growing_file(tmp_path, typed, max_lines, chunk_size):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_line(0) + "\n\n" + TORN + "\n" + _line(1))  # lines 1-5
    watch = RunWatch(tmp_path, typed=typed)
    _poll_all(watch, max_lines)
    append(path, "".join(_line(i) for i in range(2, 42)))  # lines 6-45: shapes to learn
    _poll_all(watch, max_lines)
    # lines 46-65; a huge learning rate fits a learned shape but no record (typed rows)
    later = [_line(i, lr=[10 ** 400, 1e-3]) if i in (45, 52) else _line(i) for i in range(42, 62)]
    append(path, "".join(later[:10]) + "\n" + "".join(later[10:]))
    _poll_all(watch, max_lines)
    append(path, "not json either\n" + _line(62, batches_seen=[1]))  # lines 67-68
    _poll_all(watch, max_lines)
    assert _bad_line_numbers(watch) == [4, 49, 57, 67, 68]
    assert watch.state.lines == 63
    watch.close()


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "plain"])
def test_bad_records_in_one_typed_read_keep_their_lines(tmp_path, typed):
    # a read of regular lines becomes typed rows; the bad ones among them are still placed
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n" + TORN + "\n" + "".join(_line(i) for i in range(10)))  # lines 1-12
    watch = RunWatch(tmp_path, typed=typed)
    watch.poll_all()
    append(path, "".join(_line(i) for i in range(10, 40)))  # lines 13-42: shapes to learn
    watch.poll_all()
    append(path, "".join(_line(i, lr=[10 ** 400]) if i % 7 == 0 else _line(i) for i in range(40, 70)))
    watch.poll_all()
    assert _bad_line_numbers(watch) == [2, 45, 52, 59, 66]
    watch.close()


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "plain"])
def test_line_numbers_without_orjson(tmp_path, typed, monkeypatch):
    # the standard library reader hands lines out one by one; they are numbered as they go
    monkeypatch.setattr(tail, "_fast_loads", None)
    (tmp_path / "metrics.jsonl").write_text(
        _line(0) + "\n" + TORN + "\n" + _line(1) + _line(2, steps_taken="abc") + "\n"
        + "".join(_line(i, lr=[10 ** 400]) if i == 5 else _line(i) for i in range(3, 20)))
    watch = RunWatch(tmp_path, typed=typed)
    watch.poll_all()
    assert _bad_line_numbers(watch) == [3, 5, 9]
    watch.close()


def test_a_reader_without_lines_numbers_its_items_across_polls():
    """TensorBoard's reader counts no lines: its items are numbered by their place in the
    whole stream, so two bad records read by different polls keep different numbers."""
    class Stream:
        def __init__(self, polls):
            self.polls = polls

        def poll(self):
            yield from self.polls.pop(0)

    stream, position = Stream([[{"a": 1}, {"a": 2}], [{"a": 3}]]), itertools.count(1).__next__
    first = [n for batch in numbered_reads(stream, None, position) for n in batch.line_nos]
    second = [n for batch in numbered_reads(stream, None, position) for n in batch.line_nos]
    assert (first, second) == ([1, 2], [3])

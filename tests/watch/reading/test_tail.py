"""The incremental JSON-lines tailer: torn lines, garbage, growth, truncation, rotation."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import tracemalloc

import pytest

from healthcheck.watch.reading import BadLine, JsonLinesTail, LineTail


def objs(items):
    return [x for x in items if not isinstance(x, BadLine)]


def bads(items):
    return [x for x in items if isinstance(x, BadLine)]


def test_torn_last_line_is_held_until_complete(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "lo')
    tail = JsonLinesTail(path)
    first = list(tail.poll())
    assert first == [{"step": 0}]
    assert tail.status.torn_bytes == len('{"step": 1, "lo')
    assert list(tail.poll()) == []  # nothing new: still torn, still not reported as garbage
    with open(path, "a") as fh:
        fh.write('ss": 0.5}\n')
    assert list(tail.poll()) == [{"step": 1, "loss": 0.5}]
    assert tail.status.torn_bytes == 0


def test_garbage_line_reported_once_with_its_line_number_and_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 0}\nthis is not json\n[1, 2]\n\n{"step": 1}\n')
    tail = JsonLinesTail(path)
    items = list(tail.poll())
    assert objs(items) == [{"step": 0}, {"step": 1}]
    assert [b.line_no for b in bads(items)] == [2, 3]
    assert "not JSON" in bads(items)[0].reason and "list" in bads(items)[1].reason
    with open(path, "a") as fh:
        fh.write('{"step": 2}\n')
    assert list(tail.poll()) == [{"step": 2}]  # the garbage is not reported again


def test_nan_tokens_are_read_as_floats(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"loss": NaN, "x": Infinity, "y": -Infinity}\n')
    (obj,) = JsonLinesTail(path).poll()
    assert obj["loss"] != obj["loss"] and obj["x"] == float("inf") and obj["y"] == float("-inf")


def test_missing_file_yields_nothing_until_it_appears(tmp_path):
    path = tmp_path / "later.jsonl"
    tail = JsonLinesTail(path)
    assert list(tail.poll()) == [] and not tail.status.exists
    path.write_text('{"a": 1}\n')
    assert list(tail.poll()) == [{"a": 1}]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_any_chunk_size_gives_the_same_lines(tmp_path, chunk):
    rng = random.Random(chunk)
    lines = [{"i": i, "pad": "x" * rng.randrange(0, 40)} for i in range(200)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert list(JsonLinesTail(path, chunk_size=chunk).poll()) == lines


def test_file_growing_while_read_by_a_writer_thread(tmp_path):
    """Every line written arrives exactly once and in order, whatever the interleaving."""
    path = tmp_path / "m.jsonl"
    n = 400
    done = threading.Event()

    def writer():
        with open(path, "w") as fh:
            for i in range(n):
                text = json.dumps({"step": i}) + "\n"
                cut = i % len(text)  # write each line in two pieces to create torn reads
                fh.write(text[:cut])
                fh.flush()
                fh.write(text[cut:])
                fh.flush()
                if i % 50 == 0:
                    time.sleep(0.002)
        done.set()

    t = threading.Thread(target=writer)
    tail = JsonLinesTail(path, chunk_size=256)
    t.start()
    got = []
    while not done.is_set() or len(got) < n:
        items = list(tail.poll())
        assert not bads(items), bads(items)
        got.extend(items)
        if done.is_set() and len(got) < n:
            got.extend(tail.poll())
            break
    t.join()
    assert [x["step"] for x in got] == list(range(n))


def test_sequential_appends_between_polls(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = JsonLinesTail(path)
    seen = []
    for i in range(20):
        with open(path, "a") as fh:
            fh.write(json.dumps({"step": i}) + "\n")
        seen += list(tail.poll())
    assert [x["step"] for x in seen] == list(range(20))


def test_truncation_restarts_from_the_start(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"run": 1, "step": i}) + "\n" for i in range(10)))
    tail = JsonLinesTail(path)
    assert len(list(tail.poll())) == 10
    path.write_text(json.dumps({"run": 2, "step": 0}) + "\n")  # "w" truncates in place
    assert list(tail.poll()) == [{"run": 2, "step": 0}]
    assert tail.status.restarted == "truncated"


def test_rewritten_in_place_and_grown_past_the_offset_is_noticed(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"run": 1}) + "\n")
    tail = JsonLinesTail(path)
    list(tail.poll())
    path.write_text("".join(json.dumps({"run": 2, "step": i}) + "\n" for i in range(5)))
    got = list(tail.poll())
    assert [x["run"] for x in got] == [2] * 5 and tail.status.restarted == "truncated"


def test_rotation_drains_the_old_file_then_reads_the_new_one(tmp_path):
    path = tmp_path / "m.jsonl"
    fh = open(path, "w")
    fh.write(json.dumps({"f": "old", "i": 0}) + "\n")
    fh.flush()
    tail = JsonLinesTail(path)
    assert [x["i"] for x in tail.poll()] == [0]
    fh.write(json.dumps({"f": "old", "i": 1}) + "\n")  # written just before the rotation
    fh.close()
    os.rename(path, tmp_path / "m.jsonl.1")
    path.write_text(json.dumps({"f": "new", "i": 0}) + "\n")
    got = list(tail.poll())
    assert got == [{"f": "old", "i": 1}, {"f": "new", "i": 0}]
    assert tail.status.restarted == "rotated"


def test_line_tail_counts_lines_of_the_current_file(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"a\nb\nc")
    tail = LineTail(path)
    assert list(tail.poll()) == [(1, b"a"), (2, b"b")]
    path.write_bytes(b"a\nb\nc\n")
    assert list(tail.poll()) == [(3, b"c")]


def _peak_bytes(path, n):
    path.write_text("".join(f'{{"step": {i}, "loss": 0.5}}\n' for i in range(n)))
    tail = JsonLinesTail(path, chunk_size=1 << 16)
    tracemalloc.start()
    count = sum(1 for _ in tail.poll())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == n
    return peak


def test_memory_is_flat_in_file_size(tmp_path):
    small = _peak_bytes(tmp_path / "a.jsonl", 5_000)
    large = _peak_bytes(tmp_path / "b.jsonl", 50_000)
    # Ten times the lines; a reader that kept them would need ~10x. Allow noise, not growth.
    assert large < 2 * small + 64 * 1024, (small, large)

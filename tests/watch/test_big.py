"""A million-line metrics file: judged to the end in flat memory, its one fault found."""

from __future__ import annotations

import resource

import pytest

from healthcheck.detectors import ConstantLoss, NonFiniteLoss, ZeroLoss
from healthcheck.watch import RunWatch

N = 1_000_000
BAD = 987_654  # the single NaN, late in the file


def write_million(path):
    """Short step lines (the fields a loss detector reads), in 10k-line blocks."""
    line = '{"schema":1,"kind":"step","step":%d,"epoch":%d,"time":%d,"rank":0,"loss":%s}\n'
    with open(path, "w") as fh:
        for start in range(0, N, 10_000):
            fh.write("".join(line % (i, i // 10_000, 1_700_000_000 + i,
                                     "NaN" if i == BAD else repr(1.0 + 1e-3 * (i % 97)))
                             for i in range(start, start + 10_000)))


@pytest.mark.slow
def test_million_lines_judged_in_flat_memory(tmp_path):
    run = tmp_path / "big"
    run.mkdir()
    write_million(run / "metrics.jsonl")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    watch = RunWatch(run, detectors=[NonFiniteLoss(), ZeroLoss(), ConstantLoss()])
    watch.poll_all()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert watch.state.lines == N and watch.state.step == N - 1
    events = watch.book.events()
    assert [(e.code, e.step) for e in events] == [("loss.nonfinite", BAD)]
    # The file is ~95 MiB; its lines as Python dicts would take well over 500 MiB.
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB while scanning"

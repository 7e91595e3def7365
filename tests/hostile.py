"""Checks the hostile-input tests of both packages share: an error is one sentence with
exit 2, and opening a FIFO planted where a run file belongs is refused instead of blocking."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest


def one_sentence(result, *fragments):
    """Exit 2, no traceback, and the error is the one line after ``Error:``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exc_info)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    error = result.output[result.output.index("Error: "):].rstrip("\n")
    assert "\n" not in error, error
    for fragment in fragments:
        assert fragment in error, error
    return error


def refusal_of_fifo(fifo: Path, open_it: Callable[[], object], timeout: float = 20) -> list[str]:
    """What ``open_it()`` says of the FIFO ``fifo`` (``"opened"`` or its OSError), run in a
    thread: a call that blocks opening the FIFO is released and fails the test."""
    outcome: list[str] = []

    def attempt():
        try:
            open_it()
            outcome.append("opened")
        except OSError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=timeout)
    if worker.is_alive():  # blocked opening the FIFO: release it, then fail
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail(f"opening a FIFO {fifo.name} blocked")
    return outcome

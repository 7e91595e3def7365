import os
import sys

import pytest

# The fake run dirs of the watch tests (tests/watch/_runfiles.py) serve the report tests too.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "watch"))


@pytest.fixture
def run_factory(tmp_path):
    from _runfiles import write_run

    def make(name="run", n=120, fault=None, **kw):
        return write_run(tmp_path / name, n, fault, **kw)

    return make

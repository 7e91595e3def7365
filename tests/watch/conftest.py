import os
import sys

import pytest

# The helpers in _runfiles.py are imported by name, whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    # Registered here as well as wherever the project registers markers: --strict-markers
    # must pass when this folder runs on its own.
    config.addinivalue_line("markers", "slow: takes more than ~10 s; deselect with -m 'not slow'")


@pytest.fixture
def run_factory(tmp_path):
    from _runfiles import write_run

    def make(name="run", n=120, fault=None, **kw):
        return write_run(tmp_path / name, n, fault, **kw)

    return make

"""Hypothesis profiles, and the tensors the property tests share (built once per module).

Profiles (pick one with the environment variable ``HYPOTHESIS_PROFILE``, default ``ci``):

- ``ci``: few examples and ``derandomize=True``, so every run draws the same inputs and a
  red CI is reproducible on any machine without a database (hypothesis does not allow a
  database with derandomize); the whole ``pytest -m property`` stays well under 3 min on
  a shared 2-core machine.
- ``thorough``: many random examples for a nightly job; failures are saved to the
  example database under ``.hypothesis/`` at the repository root (git-ignored) and
  replayed first on the next run.

Both print the reproduction blob of a failure and have no deadline: the machine is
shared, and wall time is not one of the properties under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _prop_configs import POOL
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from ris_model.batches import build_scenes
from ris_model.config import load_config
from ris_model.model import CovarianceNet

PROFILE_ENV = "HYPOTHESIS_PROFILE"
PROFILES = ("ci", "thorough")
EXAMPLE_DB = Path(__file__).resolve().parents[2] / ".hypothesis" / "examples"

# Generating a config calls load_config a few times; on a loaded machine that can trip
# hypothesis' too_slow check, which says nothing about the code under test.
_SLOW_OK = [HypothesisHealthCheck.too_slow]

settings.register_profile("ci", derandomize=True, max_examples=30, deadline=None, print_blob=True,
                          suppress_health_check=_SLOW_OK)
settings.register_profile("thorough", max_examples=1000, deadline=None, print_blob=True,
                          database=DirectoryBasedExampleDatabase(str(EXAMPLE_DB)),
                          suppress_health_check=_SLOW_OK)

_profile = os.environ.get(PROFILE_ENV, "ci")
if _profile not in PROFILES:
    raise pytest.UsageError(f"{PROFILE_ENV}={_profile!r} is not a profile of the property suite; "
                            f"choose one of {', '.join(PROFILES)}")
settings.load_profile(_profile)


# Small on purpose: the properties are about weights and terms, not about capacity.
SMALL_MODEL = ["model.width=32", "model.depth=1"]


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset with a small network."""
    return load_config("tiny", overrides=SMALL_MODEL)


@pytest.fixture(scope="module")
def scenes(tiny):
    """A pool of tiny scenes (K = 1 or 2 sources, padded to k_max = 2)."""
    return build_scenes(tiny.system, POOL, seed=11)


@pytest.fixture(scope="module")
def scenes_k3():
    """Scenes with up to three sources, so a permutation of sources has 6 orders, not 2."""
    cfg = load_config("tiny", overrides=SMALL_MODEL + ["system.k_max=3"])
    return cfg, build_scenes(cfg.system, 12, seed=12)


@pytest.fixture(scope="module")
def model(tiny):
    """An untrained CovarianceNet: its outputs are a random, non-oracle prediction."""
    torch.manual_seed(0)
    return CovarianceNet(tiny.system, tiny.model).eval()

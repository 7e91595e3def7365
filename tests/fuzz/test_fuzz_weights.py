"""`healthcheck weights` on a crafted run directory: any JSON in config.json and in the
metrics lines gives a table (exit 0) or one sentence (exit 2), never a traceback.

Profiles as in test_fuzz_ris_model_cli.py (``FUZZ_PROFILE=ci|long``).
"""

from __future__ import annotations

import json
import os

from click.testing import CliRunner
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st

from healthcheck.cli import cli

PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
_SLOW_OK = [HypothesisHealthCheck.too_slow, HypothesisHealthCheck.function_scoped_fixture]
FUZZ = (settings(max_examples=40, derandomize=True, deadline=None, database=None, suppress_health_check=_SLOW_OK)
        if PROFILE == "ci" else settings(max_examples=1000, deadline=None, suppress_health_check=_SLOW_OK))

TERMS = st.sampled_from(["cov", "subspace", "peak", "ortho", "", "é", "\x1b[2J"])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-10**400, max_value=10**400) | st.floats()
           | st.text(max_size=8) | TERMS)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TERMS | st.text(max_size=4),
                                                                                         inner, max_size=4),
                    max_leaves=12)
HISTORY_ENTRY = st.fixed_dictionaries({}, optional={"term": TERMS | JSON, "value": JSON, "step": JSON,
                                                    "epoch": JSON, "source": JSON})
CONFIG = st.fixed_dictionaries({}, optional={
    "config": st.fixed_dictionaries({}, optional={"loss": st.fixed_dictionaries(
        {}, optional={"weights": st.dictionaries(TERMS, JSON, max_size=4) | JSON})}) | JSON,
    "sources": st.dictionaries(st.text(max_size=20), JSON, max_size=3) | JSON,
    "weights_history": st.lists(HISTORY_ENTRY, max_size=5) | JSON,
    "primary": TERMS | JSON,
}) | JSON
LINE = st.fixed_dictionaries({"kind": st.sampled_from(["step", "epoch", "resume"]) | JSON}, optional={
    "step": JSON, "epoch": JSON, "rank": st.sampled_from([0, 1]) | JSON,
    "weights": st.dictionaries(TERMS, JSON, max_size=4) | JSON,
    "weight_sources": st.dictionaries(TERMS, JSON, max_size=4) | JSON, "primary": TERMS | JSON})


@FUZZ
@given(config=CONFIG, lines=st.lists(LINE, max_size=6), as_json=st.booleans())
def test_weights_on_any_config_and_metrics_is_a_table_or_one_sentence(tmp_path_factory, config, lines, as_json):
    run = tmp_path_factory.mktemp("weights")
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(cli, ["weights", str(run)] + (["--json"] if as_json else []))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exc_info)
    assert result.exit_code in (0, 2), result.output

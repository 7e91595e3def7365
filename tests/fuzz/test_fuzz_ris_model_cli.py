"""Hostile values for every option and config key of ``ris-model``: the answer is a result
(exit 0) or one sentence with exit status 2, never a traceback.

Training and evaluation run with tiny budgets; config keys go through resolution (the
``config`` command, a config file, and a resumed run's ``--set``), since a valid but huge
value (``system.nx=4096``) is a request to compute, not an error.

Profiles (environment variable ``FUZZ_PROFILE``): ``ci`` (default; few, fixed examples, part
of the default suite) and ``long`` (many random examples, on demand).
"""

from __future__ import annotations

import json
import math
import os

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ris_model.cli import main
from ris_model.config import ConfigError, leaf_keys
from ris_model.training.run import resolve_run_config

PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise pytest.UsageError(f"FUZZ_PROFILE={PROFILE!r} is not a fuzz profile; choose ci or long")


def fuzz(ci_examples: int):
    """Settings for one fuzz test: ``ci_examples`` fixed examples in ``ci``, 25x as many
    random ones in ``long``. No deadline: the machine is shared and time is not the property."""
    slow_ok = [HypothesisHealthCheck.too_slow, HypothesisHealthCheck.function_scoped_fixture,
               HypothesisHealthCheck.data_too_large]
    if PROFILE == "ci":
        return settings(max_examples=ci_examples, derandomize=True, deadline=None, database=None,
                        suppress_health_check=slow_ok)
    return settings(max_examples=25 * ci_examples, deadline=None, suppress_health_check=slow_ok)


# Text a user, a script or a crafted file could pass. NUL cannot be in a real argv.
SPECIAL = ["", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400", "-1", "0", "-0", "1.5", "1e-320",
           str(2**31), str(2**63), str(2**64), str(-2**63), str(10**30), "0x10", "1_000", "true", "no", "None",
           "null", "[]", "{}", "[", "]", "{", "[" * 2000, "[" * 100_000, "é", "日本", "\x1b[2J\x1b]0;pwned\x07",
           "a=b", "=", "==", "a\nb", "\t", "../../x", "-", "--", "--help", '[{"start_epoch": 0, "weights": {}}]',
           '[{"start_epoch": 0, "weights": {"peak": 1e999}}]', '[{"start_epoch": -1, "weights": {"peak": 1}}]',
           '[{"start_epoch": 0, "weights": {"cov": 0}}]', "off", "cpu", "cuda", "auto", "ml", "none", "best"]
TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=24)
HOSTILE = st.one_of(st.sampled_from(SPECIAL), TEXT, st.integers().map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))


def clean(result, allowed=(0, 2)):
    """A result or one sentence with exit 2; never a traceback or another status."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exc_info)
    assert result.exit_code in allowed, (result.exit_code, result.output)
    if result.exit_code == 2:
        error = result.output[result.output.index("Error: "):].rstrip("\n")
        assert "\n" not in error, error


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _small_size(value: str, limit: int) -> bool:
    """False for a valid count above ``limit``: asking for 10**9 scenes is a request to
    compute for a long time, not hostile input."""
    try:
        number = float(value.strip().replace("_", ""))
    except ValueError:
        return True
    return not (math.isfinite(number) and number > limit)


# ------------------------------------------------------------------ config keys
@fuzz(80)
@given(key=st.sampled_from(leaf_keys()) | TEXT, value=HOSTILE)
def test_any_set_value_of_any_key_resolves_or_is_one_sentence(key, value):
    clean(invoke("config", "--preset", "tiny", "--set", f"{key}={value}"))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


@fuzz(40)
@given(key=st.sampled_from(leaf_keys()), value=JSON_VALUES, suffix=st.sampled_from([".json", ".yaml", ".toml"]),
       nested=st.booleans())
def test_a_config_file_with_any_value_at_any_key_resolves_or_is_one_sentence(tmp_path_factory, key, value, suffix,
                                                                             nested):
    import yaml

    path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    tree: dict = {}
    node = tree
    *sections, leaf = key.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value
    if nested:
        tree = {"system": tree} if "system" not in tree else {"a": [tree]}
    if suffix == ".json":
        path.write_text(json.dumps(tree))
    elif suffix == ".yaml":
        path.write_text(yaml.safe_dump(tree))
    else:
        path.write_text(_toml(tree))
    clean(invoke("config", "--config", path))


def _toml(tree: dict) -> str:
    """A rough TOML writer: enough to hand the parser hostile values (or hostile TOML)."""
    lines = []

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return '""'
        if isinstance(v, (int, float)):
            return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()) + "}"

    def table(prefix, node):
        scalars = {k: v for k, v in node.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{json.dumps(str(k))} = {value(v)}" for k, v in scalars.items())
        for k, v in node.items():
            if isinstance(v, dict):
                table(f"{prefix}.{json.dumps(str(k))}" if prefix else json.dumps(str(k)), v)

    table("", tree)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ a finished run
TINY = ["--preset", "tiny", "--set", "train.train_scenes=32", "--set", "train.val_scenes=8",
        "--set", "train.batch_size=16", "--set", "model.width=16", "--set", "model.depth=1"]
QUIET = ["--wandb", "off", "--no-health", "--eval-n", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fuzz") / "run"
    result = invoke("train", *TINY, "--epochs", "1", *QUIET, "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    return run_dir


@fuzz(60)
@given(key=st.sampled_from(leaf_keys()) | TEXT, value=HOSTILE, equals=st.booleans())
def test_resume_with_any_set_resolves_or_is_one_sentence(run, key, value, equals):
    item = f"{key}={value}" if equals else key
    try:
        resolve_run_config(run, resume=True, preset=None, config_file=None, overrides=[item])
    except ConfigError as exc:
        assert "\n" not in str(exc), str(exc)


EVAL_OPTIONS = {
    "--n": lambda v: _small_size(v, 3), "--snr": None, "--k": None, "--seed": None, "--checkpoint": None,
    "--device": None, "--refine": lambda v: v != "ml", "--bootstrap": lambda v: _small_size(v, 5),
    "--set": lambda v: "refine" not in v,
}


@fuzz(30)
@given(option=st.sampled_from(sorted(EVAL_OPTIONS)), value=HOSTILE, key=st.sampled_from(leaf_keys()))
def test_eval_with_any_option_value_answers_or_is_one_sentence(run, option, value, key):
    keep = EVAL_OPTIONS[option]
    assume(keep is None or keep(value))
    if option == "--set":
        assume("refine" not in key)
        value = f"{key}={value}"
    args = {"--n": "1", "--refine": "none"}
    args[option] = value
    clean(invoke("eval", run, *[x for pair in args.items() for x in pair]))


BASELINE_OPTIONS = {"--snr": None, "--n": lambda v: _small_size(v, 3), "--k": None, "--seed": None,
                    "--preset": lambda v: v in ("tiny",) or v not in ("small", "paper")}


@fuzz(25)
@given(option=st.sampled_from(sorted(BASELINE_OPTIONS)), value=HOSTILE)
def test_baseline_with_any_option_value_answers_or_is_one_sentence(option, value):
    keep = BASELINE_OPTIONS[option]
    assume(keep is None or keep(value))
    args = {"--preset": "tiny", "--snr": "10", "--n": "1", "--json": None}
    args[option] = value
    flat = [x for pair in args.items() for x in pair if x is not None]
    clean(invoke("baseline", *flat))


SIMULATE_OPTIONS = {"--n": lambda v: _small_size(v, 4), "--seed": None, "--shard-size": None, "--out": None}


@fuzz(15)
@given(option=st.sampled_from(sorted(SIMULATE_OPTIONS)), value=HOSTILE)
def test_simulate_with_any_option_value_answers_or_is_one_sentence(tmp_path_factory, option, value):
    keep = SIMULATE_OPTIONS[option]
    assume(keep is None or keep(value))
    root = tmp_path_factory.mktemp("sim")
    args = {"--preset": "tiny", "--n": "2", "--out": str(root / "data")}
    if option == "--out":
        assume(value.strip() and "\n" not in value and not value.startswith("-"))
        value = str(root / value.lstrip("/"))
    args[option] = value
    clean(invoke("simulate", *[x for pair in args.items() for x in pair]))
    assert all(str(p).startswith(str(root)) for p in root.rglob("*"))


TRAIN_OPTIONS = {"--epochs": lambda v: _small_size(v, 1), "--device": None, "--wandb": lambda v: v != "online",
                 "--health-silence": None, "--health-regrade": None, "--eval-n": lambda v: _small_size(v, 1),
                 "--health-policy": None}


@fuzz(8)
@given(option=st.sampled_from(sorted(TRAIN_OPTIONS)), value=HOSTILE)
def test_train_with_any_option_value_ends_or_is_one_sentence(tmp_path_factory, option, value):
    keep = TRAIN_OPTIONS[option]
    assume(keep is None or keep(value))
    root = tmp_path_factory.mktemp("train")
    args = ["--epochs", "1", "--wandb", "off", "--eval-n", "0"]
    if option == "--health-policy":
        policy = root / "policy.toml"
        policy.write_text(value)
        args += [option, policy]
    else:
        args += [option, value]
    clean(invoke("train", *TINY, *args, "--run-dir", root / "run"), allowed=(0, 1, 2))
    assert all(str(p).startswith(str(root)) for p in root.rglob("*"))

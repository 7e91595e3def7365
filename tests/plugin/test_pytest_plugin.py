"""healthcheck's pytest plugin, run inside pytest (pytester).

Every inner run blocks the entry-point registration (``-p no:healthcheck``) and loads the
module explicitly, so these tests behave the same before and after the package registers
the plugin under ``pytest11``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from healthcheck.pytest_plugin import describe_curve, overfit_problems, sparkline, stall_split

pytest_plugins = ["pytester"]

# This module imported the plugin before the inner runs load it, so pytest warns that it
# cannot rewrite its asserts (it has none). hypothesis's plugin is left out: its summary
# hook imports hypothesis, which pytester unloads after every test (3 s per inner run).
PLUGIN = ("-p", "no:healthcheck", "-p", "healthcheck.pytest_plugin", "-p", "no:hypothesispytest",
          "-W", "ignore::pytest.PytestAssertRewriteWarning")


def run(pytester, *args):
    return pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider", *args)


# ------------------------------------------------------------------ load and register
def test_loading_the_plugin_imports_nothing_heavy():
    code = ("import sys, healthcheck.pytest_plugin\n"
            "heavy = [m for m in ('torch', 'ris_model', 'numpy', 'wandb', 'optuna', 'rich') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_markers_are_registered_for_strict_markers(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.overfit
        def test_a(): pass

        @pytest.mark.property
        def test_b(): pass

        @pytest.mark.slow
        def test_c(): pass
    """)
    # In a subprocess: in-process runs share pytest.mark's cache of known markers with
    # this session, whose own config registers them already.
    without = pytester.runpytest_subprocess("-p", "no:healthcheck", "--strict-markers")
    assert without.ret != 0  # the markers are unknown without the plugin...
    result = pytester.runpytest_subprocess(*PLUGIN, "--strict-markers", "-m", "overfit or property or slow")
    result.assert_outcomes(passed=3)  # ...and known with it
    assert any(line.startswith("@pytest.mark.overfit:") for line in run(pytester, "--markers").outlines)


def test_options_are_in_their_own_group(pytester):
    out = "\n".join(run(pytester, "--help").outlines)
    group = out[out.index("healthcheck overfit suite"):]
    for option in ("--overfit-device", "--overfit-preset", "--overfit-update-baseline", "--overfit-results"):
        assert option in group


def test_option_values_reach_the_fixtures(pytester):
    pytester.makepyfile("""
        def test_values(overfit_device, overfit_preset, overfit_update_baseline):
            assert overfit_device == "cpu"
            assert overfit_preset == "small"
            assert overfit_update_baseline is True
    """)
    run(pytester, "--overfit-device", "cpu", "--overfit-preset", "small",
        "--overfit-update-baseline").assert_outcomes(passed=1)


def test_an_unknown_device_is_a_usage_error(pytester):
    result = run(pytester, "--overfit-device", "tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'tpu'" in "\n".join(result.errlines)


def test_auto_device_follows_torch(pytester):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    pytester.makepyfile(f"""
        def test_auto(overfit_device):
            assert overfit_device == {expected!r}
    """)
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without CUDA")
def test_asking_for_cuda_without_one_fails_loudly(pytester):
    pytester.makepyfile("""
        def test_needs_gpu(overfit_device):
            pass
    """)
    result = run(pytester, "--overfit-device", "cuda")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--overfit-device cuda was given but torch sees no CUDA device*"])


# --------------------------------------------------------------------- assert_overfits
def test_assert_overfits_passes_a_descending_curve(pytester):
    pytester.makepyfile("""
        def test_ok(assert_overfits):
            assert_overfits([2.0 * 0.9 ** i for i in range(50)], max_final=0.02, tail=0.2)
    """)
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.parametrize("curve, kwargs, message", [
    ("[2.0, 1.0, 0.8, 0.7]", "max_ratio=0.2", "final/initial = 0.35 is above max_ratio 0.2"),
    ("[2.0, 0.1, 0.05]", "max_final=0.01", "final 0.05 is above max_final 0.01"),
    ("[2.0, 1.0, float('nan'), 0.1]", "", "non-finite loss at point 2 of 4"),
    ("[2.0, 0.1, 0.01] + [0.02] * 3", "tail=0.5", "the curve stopped descending"),
])
def test_assert_overfits_failure_shows_the_curve(pytester, curve, kwargs, message):
    pytester.makepyfile(f"""
        def test_bad(assert_overfits):
            assert_overfits({curve}, {kwargs})
    """)
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*loss did not overfit:*", f"*{message}*", "*loss curve (*points*", "*initial 2*"])


def test_overfit_problems_is_silent_for_a_good_curve_and_checks_its_arguments():
    assert overfit_problems([1.0, 0.5, 0.1], max_final=0.2, max_ratio=0.2, tail=0.3) == []
    with pytest.raises(ValueError, match="tail"):
        overfit_problems([1.0, 0.1], tail=1.5)
    with pytest.raises(ValueError, match="max_ratio"):
        overfit_problems([1.0, 0.1], max_ratio=0)


def test_stall_split_keeps_a_point_on_each_side():
    assert stall_split(101, 0.2) == 81  # the last 20 of 101 points
    assert stall_split(2, 0.2) == 1 and stall_split(2, 0.9) == 1


def test_sparkline_draws_a_falling_log_curve_from_high_to_low():
    line = sparkline([10.0 ** -k for k in range(8)], width=8)
    assert line == "█▇▆▅▄▃▂▁"
    assert "×" in sparkline([1.0, math.nan, 0.5])
    assert len(sparkline(list(range(1, 1000)), width=40)) == 40
    assert "best 0.1 (point 2)" in describe_curve([1.0, 0.5, 0.1, 0.2])


# ------------------------------------------------------- summary section and results file
SUMMARY_TESTS = """
    import pytest

    @pytest.mark.overfit
    def test_fits(assert_overfits, overfit_record):
        overfit_record.update(preset="tiny", rmse_phi_deg=0.04, rmse_theta_deg=0.02, seconds=65.0)
        assert_overfits([2.5, 0.5, 0.001])

    @pytest.mark.overfit
    def test_gpu_only():
        pytest.skip("the small overfit case needs CUDA")

    def test_unrelated():
        pass
"""


def test_summary_section_lists_each_overfit_test(pytester):
    pytester.makepyfile(SUMMARY_TESTS)
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines([
        "*= overfit =*",
        "test_fits *passed*2.5*0.001*0.04*65.0s*",
        "1 skipped: Skipped: the small overfit case needs CUDA",
    ])
    assert not any("test_unrelated" in line and "passed" in line for line in result.outlines
                   if "overfit" in line)


def test_results_file_holds_the_numbers(pytester):
    pytester.makepyfile(SUMMARY_TESTS)
    out = pytester.path / "artifacts" / "overfit.json"
    run(pytester, "--overfit-results", str(out)).assert_outcomes(passed=2, skipped=1)
    blob = json.loads(out.read_text())
    tests = {t["nodeid"].split("::")[-1]: t for t in blob["tests"]}
    assert set(tests) == {"test_fits", "test_gpu_only"}
    fits = tests["test_fits"]
    assert fits["outcome"] == "passed" and fits["preset"] == "tiny"
    assert fits["initial_loss"] == 2.5 and fits["final_loss"] == 0.001 and fits["curve"] == [2.5, 0.5, 0.001]
    assert fits["ratio"] == pytest.approx(0.001 / 2.5)
    assert tests["test_gpu_only"]["outcome"] == "skipped"
    assert "needs CUDA" in tests["test_gpu_only"]["message"]


def test_no_summary_without_overfit_tests(pytester):
    pytester.makepyfile("def test_plain(): pass")
    result = run(pytester)
    assert not any("= overfit =" in line for line in result.outlines)


# -------------------------------------------------------------------- trainer_factory
def test_trainer_factory_builds_a_monitored_run_on_fixed_scenes(pytester):
    pytester.makepyfile("""
        import json

        def test_tiny_run(trainer_factory):
            run = trainer_factory("tiny", scenes=16, epochs=2, overrides={"model.width": 32})
            assert run.device.type == "cpu"          # the Trainer's own attribute
            assert run.train_data is run.val_data     # train = val
            assert len(run.scenes) == 16
            run.fit()
            assert len(run.curve.val) == 2 and all(v > 0 for v in run.curve.val)
            assert run.result.epochs_done == 2 and run.seconds > 0
            assert (run.run_dir / "health.jsonl").exists()  # the monitor is attached
            assert [e for e in run.events("error")] == []
            metrics = run.localisation()
            assert metrics["n_sources"] == int(run.scenes.mask.sum())
    """)
    # In a subprocess: training imports torch submodules lazily, and pytester would unload
    # them after an in-process run (re-importing some of them fails).
    pytester.runpytest_subprocess(*PLUGIN, "--overfit-device", "cpu").assert_outcomes(passed=1)

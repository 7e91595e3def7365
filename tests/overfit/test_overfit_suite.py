"""The overfit regression suite: the seed report's overfit test, done right.

512 scenes at an SNR uniform in [10, 20] dB, the same scenes for training and validation,
100 epochs for tiny, 200 for small and paper (healthcheck.ris.overfit.recipe_for).
A model that cannot drive the loss towards 0 on scenes it sees every epoch has a bug.
Asserted, per preset:

* the loss before training lies in the range the maths gives for an untrained model
  (healthcheck.ris.gate_subject.init_ranges);
* the final validation loss is below a bound and below 20 % of the initial one, and the
  curve still descends at the end (the best of the last 20 % of epochs beats the best of
  the first 80 %);
* MUSIC on R̂ + εI with the oracle source count puts every source within 1° RMS (φ and θ,
  Hungarian-matched) on these scenes;
* the health monitor raised no error-level event;
* against the committed baseline tests/overfit/baselines/<preset>-<device>.json: the
  final loss, and the loss at 25 / 50 / 75 % of the epochs, are at most
  BASELINE_TOLERANCE × the baseline's. The baseline only changes with
  ``--overfit-update-baseline``.

Run: ``pytest -m overfit`` (tiny on CPU: 1-4 min on 2 shared cores);
``pytest -m overfit --overfit-device cuda --overfit-preset small`` on a GPU.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

overfit = pytest.mark.overfit  # every test that trains; the comparison's own test is fast

PRESETS = ("tiny", "small", "paper")
CUDA_ONLY = {"small": "11 min", "paper": "hours"}  # their CPU time on 2 cores, for the skip reason
BASELINES = Path(__file__).parent / "baselines"

# Final validation loss bounds, about 10x what was measured (CPU, seed 0): tiny 9.3e-4 ..
# 1.13e-3 over seeds 0-3 (0.04 % of the initial loss); small 5.0e-3. paper: not measured
# to the end on this machine; provisional, to be set from the first GPU run's baseline.
MAX_FINAL = {"tiny": 1e-2, "small": 5e-2, "paper": 1e-1}
MAX_RATIO = 0.2
TAIL = 0.2
MAX_RMSE_DEG = 1.0
# Run-to-run spread on tiny (seeds 0-3): final 9.3e-4 .. 1.13e-3 (x1.23); at 25/50/75 % of
# the epochs at most x1.2; a rerun with the same seed on one machine is bit-identical. 3x
# is 2.4x beyond that spread, for other CPUs, BLAS builds and torch versions, while the
# regressions this exists for (a term lost, an LR schedule broken, 60 instead of 100
# epochs) move these numbers by 10x or more.
BASELINE_TOLERANCE = 3.0
CHECKPOINTS = (0.25, 0.5, 0.75)


@dataclass
class Outcome:
    preset: str
    device: str
    run: Any
    localisation: dict

    @property
    def curve(self) -> list[float]:
        return self.run.val_curve

    def record(self) -> dict[str, Any]:
        loc = self.localisation
        return {"preset": self.preset, "device": self.device, "seconds": self.run.seconds,
                "initial_loss": self.curve[0], "final_loss": self.curve[-1],
                "rmse_phi_deg": loc["rmse_phi_deg"], "rmse_theta_deg": loc["rmse_theta_deg"],
                "within_1deg": loc["within_1deg"]}


@pytest.fixture(scope="module", params=PRESETS)
def outcome(request, overfit_device, overfit_preset, trainer_factory) -> Outcome:
    preset = request.param
    if overfit_preset is not None and overfit_preset not in PRESETS:
        pytest.fail(f"--overfit-preset {overfit_preset!r} is not one of {', '.join(PRESETS)}", pytrace=False)
    if overfit_preset is not None and overfit_preset != preset:
        pytest.skip(f"--overfit-preset {overfit_preset} selects another preset")
    if preset in CUDA_ONLY and overfit_device != "cuda":
        pytest.skip(f"the {preset} overfit case runs on CUDA only ({CUDA_ONLY[preset]} on a CPU): "
                    f"pass --overfit-device cuda, or auto on a machine with CUDA")
    run = trainer_factory(preset)
    with _one_thread_on_cpu(overfit_device):
        run.fit()
        return Outcome(preset, overfit_device, run, run.localisation())


@contextlib.contextmanager
def _one_thread_on_cpu(device: str):
    """The 2 cores are shared: two threads each spin-waiting for the other cost more than
    they gain on tiny's small matrices (measured: 3 CPU-minutes vs about 1)."""
    import torch

    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@overfit
def test_initial_loss_is_in_its_expected_range(outcome, overfit_record):
    from healthcheck.ris.gate_subject import init_ranges

    overfit_record.update(outcome.record())
    total, terms = outcome.run.initial
    ranges = init_ranges(outcome.run.cfg.system.n_elements)
    weights = outcome.run.cfg.loss.weights.as_dict()
    for term, value in terms.items():
        lo, hi = ranges[term]
        assert lo <= value <= hi, f"{term} = {value:.4g} before training; expected in [{lo}, {hi}]"
    lo = sum(weights[t] * ranges[t][0] for t in terms)
    hi = sum(weights[t] * ranges[t][1] for t in terms)
    assert lo <= total <= hi, f"initial loss {total:.4g} outside [{lo:.3g}, {hi:.3g}]"


@overfit
def test_the_loss_overfits(outcome, assert_overfits, overfit_record):
    overfit_record.update(outcome.record())
    assert outcome.run.result.stop_reason is None, outcome.run.result.stop_reason
    assert_overfits(outcome.curve, max_final=MAX_FINAL[outcome.preset], max_ratio=MAX_RATIO, tail=TAIL,
                    label=f"{outcome.preset} val loss")


@overfit
def test_every_source_is_localised_within_a_degree(outcome, overfit_record):
    overfit_record.update(outcome.record())
    loc = outcome.localisation
    assert loc["n_matched"] == loc["n_sources"] > 0  # oracle K: one estimate per source
    assert loc["rmse_phi_deg"] < MAX_RMSE_DEG and loc["rmse_theta_deg"] < MAX_RMSE_DEG, (
        f"MUSIC on the learned covariance: RMSE phi {loc['rmse_phi_deg']:.3g} deg, theta "
        f"{loc['rmse_theta_deg']:.3g} deg, {loc['within_1deg']:.1%} of {loc['n_sources']} sources within 1 deg")


@overfit
def test_the_monitor_raised_no_error(outcome, overfit_record):
    overfit_record.update(outcome.record())
    events = outcome.run.events("error")
    assert not events, "health events at error level or worse:\n" + "\n".join(e.line() for e in events)


def baseline_path(preset: str, device: str) -> Path:
    return BASELINES / f"{preset}-{device}.json"


def baseline_blob(outcome: Outcome) -> dict[str, Any]:
    import torch

    from healthcheck.ris.overfit import recipe_for

    loc = outcome.localisation
    return {
        "schema": 1, "preset": outcome.preset, "device": outcome.device,
        "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in recipe_for(outcome.preset).items()},
        "config_hash": outcome.run.cfg.hash, "initial_loss": outcome.curve[0], "final_loss": outcome.curve[-1],
        "val_curve": outcome.curve, "rmse_phi_deg": loc["rmse_phi_deg"], "rmse_theta_deg": loc["rmse_theta_deg"],
        "within_1deg": loc["within_1deg"], "seconds": round(outcome.run.seconds, 1),
        "tolerance": BASELINE_TOLERANCE,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }


def regression_problems(curve: list[float], baseline: dict[str, Any]) -> list[str]:
    """Where ``curve`` is worse than the baseline's by more than the tolerance."""
    base = baseline["val_curve"]
    if len(base) != len(curve):
        return [f"the baseline has {len(base) - 1} epochs and this run {len(curve) - 1}: the recipe changed"]
    problems = []
    for q in (*CHECKPOINTS, 1.0):
        i = round(q * (len(curve) - 1))
        if not curve[i] <= BASELINE_TOLERANCE * base[i]:
            problems.append(f"at {q:.0%} of the epochs (epoch {i}) the loss is {curve[i]:.4g}, "
                            f"{curve[i] / base[i]:.1f}x the baseline's {base[i]:.4g} "
                            f"(tolerance {BASELINE_TOLERANCE:g}x)")
    return problems


@overfit
def test_the_curve_matches_the_baseline(outcome, overfit_update_baseline, overfit_record):
    path = baseline_path(outcome.preset, outcome.device)
    overfit_record.update(outcome.record())
    if overfit_update_baseline:
        from healthcheck.pytest_plugin import overfit_problems

        problems = overfit_problems(outcome.curve, max_final=MAX_FINAL[outcome.preset], max_ratio=MAX_RATIO,
                                    tail=TAIL)
        assert not problems, "not writing a baseline from a run that does not overfit: " + "; ".join(problems)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(baseline_blob(outcome), indent=1) + "\n")
        overfit_record["baseline"] = f"written to {path.name}"
        return
    if not path.is_file():
        pytest.skip(f"no baseline {path.relative_to(BASELINES.parent.parent)}: write it with "
                    f"pytest -m overfit --overfit-device {outcome.device} --overfit-preset {outcome.preset} "
                    f"--overfit-update-baseline, and commit it")
    baseline = json.loads(path.read_text())
    overfit_record["baseline_final_loss"] = baseline["final_loss"]
    assert baseline["config_hash"] == outcome.run.cfg.hash, (
        f"the {outcome.preset} config changed (hash {outcome.run.cfg.hash}, baseline {baseline['config_hash']}); "
        f"if that is intended, rewrite the baseline with --overfit-update-baseline")
    problems = regression_problems(outcome.curve, baseline)
    assert not problems, "worse than the baseline:\n  - " + "\n  - ".join(problems)


# ------------------------------------------- the comparison itself (fast, default suite)
def test_regression_problems_flags_a_slower_curve_only_beyond_the_tolerance():
    base = {"val_curve": [2.0 * 0.9 ** i for i in range(101)]}
    assert regression_problems(list(base["val_curve"]), base) == []
    within = [v * (BASELINE_TOLERANCE * 0.99) for v in base["val_curve"]]
    assert regression_problems(within, base) == []
    slower = [v * (1 if i < 50 else 5) for i, v in enumerate(base["val_curve"])]
    problems = regression_problems(slower, base)
    assert len(problems) == 3 and "epoch 75" in problems[1] and "5.0x" in problems[1]
    assert "recipe changed" in regression_problems(slower[:60], base)[0]


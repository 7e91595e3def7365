"""The pytest plugin of healthcheck: the overfit suite's markers, options, fixtures, summary.

Registered under the ``pytest11`` entry point, so every pytest run in an environment that
has the package loads it. Loading it must therefore cost nothing: this module imports only
the standard library and pytest; torch and ris_model are imported inside the fixtures that
need them, when a test asks for them.

Markers (registered, so ``--strict-markers`` passes): ``overfit``, ``property``, ``slow``.

Options (group "healthcheck overfit suite"):

    --overfit-device auto|cpu|cuda   device of overfit runs (auto: CUDA when present)
    --overfit-preset NAME            run only this preset's overfit cases
    --overfit-update-baseline        write the baselines instead of comparing with them
    --overfit-results FILE.json      write every overfit test's numbers (a CI artifact)

Fixtures: ``overfit_device``, ``overfit_preset``, ``overfit_update_baseline``,
``trainer_factory`` (a ris_model Trainer on a fixed set of scenes, health monitor
attached), ``overfit_record`` (numbers for the summary) and ``assert_overfits`` (the
loss-curve assertion, with the curve drawn in its failure message).

After the run an "overfit" section of the terminal summary lists each overfit test's
initial and final loss, angle error and time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

DEVICE_OPTION = "--overfit-device"
PRESET_OPTION = "--overfit-preset"
UPDATE_BASELINE_OPTION = "--overfit-update-baseline"
RESULTS_OPTION = "--overfit-results"
DEVICES = ("auto", "cpu", "cuda")

MARKERS = {
    "overfit": "overfit: trains to (near) zero loss on a fixed set of scenes; "
               "run with -m overfit (see --overfit-device, --overfit-preset)",
    "property": "property: property-based tests over loss-weight configs (-m property)",
    "slow": "slow: long-running tests, not in the default suite (-m 'not slow')",
}

RECORD_KEY = "healthcheck_overfit"  # name of the report's user property carrying a record
RESULTS_PLUGIN = "healthcheck-overfit-results"
_RESULTS = pytest.StashKey["OverfitResults"]()
_CURVE_POINTS = 200  # points of a loss curve kept in the JSON results
_SPARK = "▁▂▃▄▅▆▇█"
_SPARK_WIDTH = 48


# ---------------------------------------------------------------------------- setup
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("healthcheck", "healthcheck overfit suite")
    group.addoption(DEVICE_OPTION, action="store", choices=DEVICES, default="auto",
                    help="device of overfit runs: auto picks CUDA when torch sees one (default: auto)")
    group.addoption(PRESET_OPTION, action="store", default=None, metavar="NAME",
                    help="run only this preset's overfit cases (default: every preset the device can run)")
    group.addoption(UPDATE_BASELINE_OPTION, action="store_true", default=False,
                    help="write the overfit baselines from this run instead of comparing with them")
    group.addoption(RESULTS_OPTION, action="store", default=None, metavar="FILE.json",
                    help="write each overfit test's losses, angle errors and times to this JSON file")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)
    results = OverfitResults(config)
    config.stash[_RESULTS] = results
    config.pluginmanager.register(results, RESULTS_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, None)
    if results is not None and config.pluginmanager.is_registered(results):
        config.pluginmanager.unregister(results)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def overfit_device(pytestconfig: pytest.Config) -> str:
    """"cpu" or "cuda", from --overfit-device; asking for CUDA without one fails loudly.

    A GPU job that silently ran on the CPU (or skipped) would pass while testing nothing.
    """
    choice = pytestconfig.getoption(DEVICE_OPTION)
    if choice == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if choice == "cuda":
        pytest.fail(f"{DEVICE_OPTION} cuda was given but torch sees no CUDA device "
                    f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})", pytrace=False)
    return "cpu"


@pytest.fixture(scope="session")
def overfit_preset(pytestconfig: pytest.Config) -> str | None:
    """The preset named by --overfit-preset, or None (every preset the device can run)."""
    return pytestconfig.getoption(PRESET_OPTION)


@pytest.fixture(scope="session")
def overfit_update_baseline(pytestconfig: pytest.Config) -> bool:
    """True with --overfit-update-baseline: write baselines instead of comparing with them."""
    return bool(pytestconfig.getoption(UPDATE_BASELINE_OPTION))


class TrainerFactory:
    """Builds monitored ris_model overfit runs; call it like ``trainer_factory("tiny")``.

    Returns a ``healthcheck.ris.overfit.OverfitRun``: ``.trainer`` (the Trainer,
    whose attributes the run also answers to), ``.fit()``, ``.curve`` (per-epoch losses),
    ``.events(min_severity)`` (the health monitor's events) and ``.localisation()``.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory, device: str, preset: str | None) -> None:
        self._tmp = tmp_path_factory
        self.device = device
        self.default_preset = preset or "tiny"

    def __call__(self, preset: str | None = None, *, scenes: int | None = None, snr_db: tuple | None = None,
                 seed: int | None = None, epochs: int | None = None, lr: float | None = None,
                 overrides: Mapping[str, Any] | None = None, callbacks: Sequence[Any] = (),
                 run_dir: Any = None, policy: Any = None) -> Any:
        """A run of ``preset`` (default: --overfit-preset, else tiny); unset knobs follow the
        preset's recipe (``healthcheck.ris.overfit.recipe_for``)."""
        from .ris.overfit import OverfitSpec, build_overfit_run

        spec = OverfitSpec(preset=preset or self.default_preset, scenes=scenes, snr_db=snr_db, seed=seed,
                           epochs=epochs, lr=lr, overrides=dict(overrides or {}))
        run_dir = run_dir if run_dir is not None else self._tmp.mktemp(f"overfit-{spec.preset}")
        return build_overfit_run(spec, run_dir, device=self.device, callbacks=callbacks, policy=policy)


@pytest.fixture(scope="session")
def trainer_factory(tmp_path_factory: pytest.TempPathFactory, overfit_device: str,
                    overfit_preset: str | None) -> TrainerFactory:
    """Monitored ris_model overfit runs on the --overfit-device (see `TrainerFactory`)."""
    return TrainerFactory(tmp_path_factory, overfit_device, overfit_preset)


class OverfitRecord(dict):
    """What the "overfit" summary and the results file show for one test.

    Known keys: preset, device, initial_loss, final_loss, ratio, min_loss, epochs,
    rmse_phi_deg, rmse_theta_deg, within_1deg, seconds, curve; any other JSON value is
    kept in the results file.
    """


_RECORD = pytest.StashKey[OverfitRecord]()


@pytest.fixture
def overfit_record(request: pytest.FixtureRequest) -> OverfitRecord:
    """A dict for this test's overfit numbers; `assert_overfits` fills the loss ones."""
    record = OverfitRecord()
    request.node.stash[_RECORD] = record
    return record


@pytest.fixture
def assert_overfits(overfit_record: OverfitRecord) -> Callable[..., None]:
    """``assert_overfits(losses, *, max_final=None, max_ratio=0.2, tail=None, label="loss")``.

    ``losses`` is the curve, first value the loss before training. Fails (with the curve
    drawn) unless every value is finite, the final one is at most ``max_final`` and at most
    ``max_ratio`` × the initial one, and, with ``tail`` (e.g. 0.2), the best of the last
    ``tail`` share of the curve improves on the best before it (the curve still descends).
    """

    def check(losses: Sequence[float], *, max_final: float | None = None, max_ratio: float | None = 0.2,
              tail: float | None = None, label: str = "loss") -> None:
        __tracebackhide__ = True
        values = [float(v) for v in losses]
        _record_curve(overfit_record, values)
        problems = overfit_problems(values, max_final=max_final, max_ratio=max_ratio, tail=tail)
        if problems:
            raise AssertionError(f"{label} did not overfit:\n" + "\n".join(f"  - {p}" for p in problems)
                                 + "\n" + describe_curve(values, label=label))

    return check


# ---------------------------------------------------------------- curve arithmetic
def overfit_problems(values: Sequence[float], *, max_final: float | None = None,
                     max_ratio: float | None = 0.2, tail: float | None = None) -> list[str]:
    """The sentences `assert_overfits` fails with; empty when the curve is fine."""
    if max_ratio is not None and not max_ratio > 0:
        raise ValueError(f"max_ratio must be > 0, but got {max_ratio=}")
    if tail is not None and not 0 < tail < 1:
        raise ValueError(f"tail must be a share in (0, 1), but got {tail=}")
    if len(values) < 2:
        return [f"a curve needs at least 2 values (before and after training), but got {len(values)}"]
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        return [f"non-finite loss at point {bad[0]} of {len(values)} ({values[bad[0]]})"]
    initial, final = values[0], values[-1]
    problems = []
    if max_final is not None and not final <= max_final:
        problems.append(f"final {final:.4g} is above max_final {max_final:.4g}")
    if max_ratio is not None:
        if initial <= 0:
            problems.append(f"initial {initial:.4g} is not positive: nothing to overfit from")
        elif not final <= max_ratio * initial:
            problems.append(f"final/initial = {final / initial:.3g} is above max_ratio {max_ratio:g} "
                            f"({final:.4g} vs {initial:.4g})")
    if tail is not None:
        split = stall_split(len(values), tail)
        head_best, tail_best = min(values[:split]), min(values[split:])
        if not tail_best < head_best:
            problems.append(f"the curve stopped descending: the best of the last {tail:.0%} "
                            f"({tail_best:.4g}) does not improve on the best before it ({head_best:.4g})")
    return problems


def stall_split(n: int, tail: float) -> int:
    """Index where the last ``tail`` share of ``n`` points starts (at least one on each side)."""
    return min(max(1, n - max(1, round(n * tail))), n - 1)


def sparkline(values: Sequence[float], width: int = _SPARK_WIDTH) -> str:
    """The curve in ``width`` characters: bucket means, log scale when every value is > 0."""
    if not values:
        return ""
    n = len(values)
    width = max(1, min(width, n))
    buckets = [values[i * n // width:(i + 1) * n // width] or [values[-1]] for i in range(width)]
    log = all(v > 0 for v in values if math.isfinite(v))
    means: list[float | None] = []
    for b in buckets:
        finite = [v for v in b if math.isfinite(v)]
        if len(finite) < len(b):
            means.append(None)
        else:
            m = sum(finite) / len(finite)
            means.append(math.log10(m) if log else m)
    shown = [m for m in means if m is not None]
    lo, hi = (min(shown), max(shown)) if shown else (0.0, 1.0)
    span = hi - lo or 1.0
    return "".join("×" if m is None else _SPARK[min(len(_SPARK) - 1, int((m - lo) / span * len(_SPARK)))]
                   for m in means)


def describe_curve(values: Sequence[float], *, label: str = "loss") -> str:
    """A few lines for a failure message: sparkline, initial / best / final, quartiles."""
    if not values:
        return f"  {label}: no values"
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    best = min(finite) if finite else (math.nan, -1)
    scale = "log scale" if all(v > 0 for v, _ in finite) else "linear scale"
    marks = "  ".join(f"{q:.0%}: {values[min(len(values) - 1, round(q * (len(values) - 1)))]:.4g}"
                      for q in (0.25, 0.5, 0.75))
    return (f"  {label} curve ({len(values)} points, {scale}): {sparkline(values)}\n"
            f"  initial {values[0]:.4g}   best {best[0]:.4g} (point {best[1]})   final {values[-1]:.4g}\n"
            f"  at {marks}")


def _record_curve(record: OverfitRecord, values: Sequence[float]) -> None:
    if not values:
        return
    finite = [v for v in values if math.isfinite(v)]
    record.setdefault("initial_loss", values[0])
    record["final_loss"] = values[-1]
    record["min_loss"] = min(finite) if finite else math.nan
    record["ratio"] = values[-1] / values[0] if values[0] else math.nan
    record.setdefault("epochs", len(values) - 1)
    step = max(1, math.ceil(len(values) / _CURVE_POINTS))
    record["curve"] = list(values[::step]) + ([values[-1]] if (len(values) - 1) % step else [])


# ------------------------------------------------------------------ report plumbing
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Carries each overfit test's record on its report (so it survives xdist)."""
    outcome = yield
    report = outcome.get_result()
    record = item.stash.get(_RECORD, None)
    marked = item.get_closest_marker("overfit") is not None
    if not (marked or record):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        blob = dict(record or {})
        if report.skipped and isinstance(report.longrepr, tuple):
            blob["message"] = str(report.longrepr[2])
        report.user_properties.append((RECORD_KEY, json.dumps(blob, default=_json_default)))


class OverfitResults:
    """Gathers the records as reports arrive, prints the summary, writes the results file.

    Registered per session in `pytest_configure` (not module state: pytest may run inside
    pytest). Reports reach the controlling process under xdist too, records riding along.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []
        self._setup_seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "setup":
            self._setup_seconds[report.nodeid] = report.duration
        for key, value in report.user_properties:
            if key == RECORD_KEY:
                record = json.loads(str(value))
                record.setdefault("seconds", report.duration + self._setup_seconds.get(report.nodeid, 0.0))
                record["nodeid"] = report.nodeid
                record["outcome"] = report.outcome
                self.records.append(record)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """A row per overfit test that ran; skipped ones as one line per reason."""
        if not self.records:
            return
        tr = terminalreporter
        tr.section("overfit")
        ran = [r for r in self.records if r["outcome"] != "skipped"]
        if ran:
            width = max(24, min(60, max(len(_short(r["nodeid"])) for r in ran)))
            tr.write_line(f"{'test':<{width}} {'result':<7} {'initial':>9} {'final':>9} {'angle°':>8} {'time':>8}")
            for r in ran:
                tr.write_line(f"{_short(r['nodeid'])[-width:]:<{width}} {r['outcome']:<7} "
                              f"{_cell(r.get('initial_loss')):>9} {_cell(r.get('final_loss')):>9} "
                              f"{_cell(_angle(r)):>8} {_cell(r.get('seconds'), 's'):>8}")
        reasons: dict[str, int] = {}
        for r in self.records:
            if r["outcome"] == "skipped":
                reason = r.get("message") or "skipped"
                reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            tr.write_line(f"{count} skipped: {reason}")
        path = self.config.getoption(RESULTS_OPTION)
        if path and not hasattr(self.config, "workerinput"):
            tr.write_line(f"overfit results: {path}")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        path = self.config.getoption(RESULTS_OPTION)
        if not path or hasattr(self.config, "workerinput"):  # only the controlling process writes
            return
        blob = {"schema": 1, "time": time.time(), "exitstatus": int(exitstatus),
                "device_option": self.config.getoption(DEVICE_OPTION),
                "preset_option": self.config.getoption(PRESET_OPTION), "tests": self.records}
        from .safe_files import write_atomic  # exclusive temporary: a planted link is never followed

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_atomic(path, json.dumps(blob, indent=2, default=_json_default).encode("utf-8"))


def _short(nodeid: str) -> str:
    """``test_name[param]`` of a node id: the file is in pytest's own report."""
    return nodeid.rsplit("::", 1)[-1]


def _angle(record: Mapping[str, Any]) -> float | None:
    if "angle_rmse_deg" in record:
        return record["angle_rmse_deg"]
    values = [float(record[k]) for k in ("rmse_phi_deg", "rmse_theta_deg") if record.get(k) is not None]
    return max(values) if values else None


def _cell(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.1f}{unit}" if unit == "s" else f"{value:.3g}{unit}"
    return str(value)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


__all__ = ["DEVICE_OPTION", "MARKERS", "OverfitRecord", "PRESET_OPTION", "RESULTS_OPTION", "TrainerFactory",
           "UPDATE_BASELINE_OPTION", "describe_curve", "overfit_problems", "sparkline"]

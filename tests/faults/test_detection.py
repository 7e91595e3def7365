"""The detection benchmark: its verdicts, its summary, and the command line.

The end-to-end runs are short (12 steps) and use faults whose signal follows from the
fault itself: with every learning rate 0 the learning rate detector must fire; with the
head's input detached the encoder gets no gradient; with the optimizer built from the
encoder only, the head is in no param group before the first step.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from healthcheck.events import HealthEvent
from healthcheck.faults import Fault, load_faults, select_faults
from healthcheck.ris.detection import RunResult, base_config, healthy_config, judge, run_benchmark, summarise
from healthcheck.ris.faults import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
STEPS = 12  # 3 epochs of 4 steps: enough for every patience used below
SMALL = {"model.width": 32, "model.depth": 2, "train.val_scenes": 32}  # keep each run well under a second
RUN_KEYS = {"fault", "seed", "detected", "first_step", "codes", "monitor_detected", "monitor_first_step"}
SUMMARY_KEYS = {"recall", "recall_by_family", "false_alarm_rate", "warning_rate_healthy",
                "median_latency_steps", "max_latency_steps", "wall_s", "monitor_only_recall",
                "monitor_only_false_alarm_rate", "monitor_only_median_latency_steps",
                "step0_median_latency_steps", "monitor_only_step0_median_latency_steps"}


def event(code, severity, step):
    return HealthEvent(code=code, severity=severity, step=step)


# ------------------------------------------------------------------------- verdicts
def test_judge_credits_only_error_level_events_from_the_start_step():
    events = [event("weights.changed", "info", 2), event("lr.tiny", "warning", 3), event("grad.zero", "error", 4),
              event("loss.nonfinite", "critical", 9), event("param.frozen", "error", 7),
              event("monitor.summary", "info", 9)]
    v = judge(events, start_step=5)
    assert v["detected"] and v["first_step"] == 7 and v["first_error_code"] == "param.frozen"
    assert v["early"] == ["grad.zero"]  # before the fault acted: not credited to it
    assert v["codes"] == ["weights.changed", "lr.tiny", "grad.zero", "loss.nonfinite", "param.frozen"]
    assert v["severity"]["loss.nonfinite"] == "critical"


def test_judge_without_error_level_events_is_not_a_detection():
    v = judge([event("lr.tiny", "warning", 3), event("param.update_ratio", "warning", 1)], start_step=0)
    assert not v["detected"] and v["first_step"] is None and v["codes"] == ["lr.tiny", "param.update_ratio"]


def _run(fault, family, detected, first, start=0, codes=(), severity=None, **monitor):
    codes = list(codes)
    return RunResult(fault=fault, family=family, seed=0, detected=detected, first_step=first, codes=codes,
                     severity=severity or {c: "error" for c in codes}, start_step=start, **monitor)


def test_summary_rates_and_latencies():
    runs = [
        _run("a", "x", True, 3, codes=["grad.zero"]),
        _run("a", "x", False, None),
        _run("b", "y", True, 12, start=10, codes=["loss.nonfinite"]),
        _run("c", "y", True, 0, codes=["lr.zero"]),
        _run(None, None, False, None, codes=["lr.tiny"], severity={"lr.tiny": "warning"}),
        _run(None, None, False, None),
        _run(None, None, True, 5, codes=["grad.none"]),
        _run(None, None, False, None),
    ]
    s = summarise(runs, wall_s=1.234)
    assert set(s) == SUMMARY_KEYS
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["recall_by_family"] == {"x": pytest.approx(0.5), "y": pytest.approx(1.0)}
    assert s["false_alarm_rate"] == pytest.approx(1 / 4)
    assert s["warning_rate_healthy"] == pytest.approx(1 / 4)  # warning-level events only; errors are alarms
    assert s["median_latency_steps"] == 2 and s["max_latency_steps"] == 3  # latencies 3, 2, 0
    assert s["wall_s"] == 1.23
    # no preflight ran: the monitor's verdicts are the verdicts
    assert s["monitor_only_recall"] == s["recall"] and s["monitor_only_false_alarm_rate"] == s["false_alarm_rate"]
    assert s["step0_median_latency_steps"] == 1.5  # faults a and c act from step 0: latencies 3 and 0


def test_summary_keeps_the_monitor_alone_apart_from_preflight_detections():
    runs = [
        _run("a", "x", True, 0, codes=["preflight.micro_overfit"], monitor_detected=False, monitor_first_step=None),
        _run(
            "b", "x", True, 0, codes=["preflight.lr_at_step0", "lr.zero"], monitor_detected=True, monitor_first_step=1
        ),
        _run("c", "y", True, 12, start=10, codes=["loss.nonfinite"], monitor_detected=True, monitor_first_step=12),
        _run(None, None, True, 0, codes=["preflight.micro_overfit"], monitor_detected=False, monitor_first_step=None),
    ]
    s = summarise(runs, wall_s=1.0)
    assert s["recall"] == 1.0 and s["monitor_only_recall"] == pytest.approx(2 / 3)
    assert s["false_alarm_rate"] == 1.0 and s["monitor_only_false_alarm_rate"] == 0.0
    assert s["median_latency_steps"] == 0 and s["monitor_only_median_latency_steps"] == 1.5  # 1 and 2
    assert s["step0_median_latency_steps"] == 0 and s["monitor_only_step0_median_latency_steps"] == 1


def test_healthy_configs_come_from_the_hpo_space():
    from ris_model.hpo import search_space

    cfgs = [healthy_config("tiny", STEPS, seed) for seed in range(6)]
    base = base_config("tiny", STEPS, 0)
    space = search_space(base)
    lrs = {c.train.lr for c in cfgs}
    assert len(lrs) == 6
    lo, hi = space["train.lr"].low, space["train.lr"].high
    assert all(lo <= c.train.lr <= hi for c in cfgs)
    for c in cfgs:
        for term in ("subspace", "peak", "ortho"):  # HPO multiplies the base weight by its factor
            factor = getattr(c.loss.weights, term) / getattr(base.loss.weights, term)
            assert base.hpo.weight_scale_min - 1e-9 <= factor <= base.hpo.weight_scale_max + 1e-9
        assert c.loss.weights.cov == base.loss.weights.cov > 0
        assert c.train.epochs == 3 and c.train.train_scenes == math.ceil(STEPS / 3) * c.train.batch_size


def test_a_fault_starting_after_the_run_is_refused():
    late = Fault("late", "loss", lambda t: None, start_step=STEPS)
    with pytest.raises(ValueError, match="raise --steps"):
        run_benchmark([late], seeds=1, healthy=0, steps=STEPS)


# ------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def small_benchmark():
    faults = select_faults(REGISTRY, ["lr_zero", "head_detached", "optimizer_subset", "loss_eps_floor"])
    seen = []
    threads = torch.get_num_threads()  # module scope runs before the per-test one-thread fixture
    torch.set_num_threads(1)
    try:
        bench = run_benchmark(
            faults,
            seeds=1,
            healthy=2,
            preset="tiny",
            steps=STEPS,
            device="cpu",
            overrides=SMALL,
            on_run=lambda r, done, total: seen.append((r.fault, done, total)),
        )
    finally:
        torch.set_num_threads(threads)
    return bench, seen


def test_runner_detects_faults_by_their_own_signal(small_benchmark):
    bench, _ = small_benchmark
    by = {r.fault: r for r in bench.runs}
    assert by["lr_zero"].detected and "lr.zero" in by["lr_zero"].codes
    assert by["head_detached"].detected and "grad.none" in by["head_detached"].codes
    r = by["optimizer_subset"]
    assert r.detected and r.first_step == 0 and "param.not_in_optimizer" in r.codes  # known before any step
    assert r.monitor_detected and r.monitor_first_step == 0
    assert all(r.latency == r.first_step for r in bench.runs if r.fault)  # all four act from step 0


def test_preflight_catches_what_training_cannot_show(small_benchmark):
    # ε added to the prediction only: the loss is not 0 at the target, which the self-test
    # sees before training; in 12 steps the monitored run shows nothing wrong
    bench, _ = small_benchmark
    r = next(r for r in bench.runs if r.fault == "loss_eps_floor")
    assert r.detected and r.first_step == 0 and r.latency == 0
    assert "preflight.loss_self_test" in r.codes and r.preflight_failed == ["loss_self_test"]
    assert not r.monitor_detected and r.monitor_first_step is None
    assert by_fault(bench)["lr_zero"].preflight_failed[0] == "lr_at_step0"


def by_fault(bench):
    return {r.fault: r for r in bench.runs}


def test_without_preflight_only_the_monitor_scores():
    faults = select_faults(REGISTRY, ["loss_eps_floor"])
    bench = run_benchmark(
        faults, seeds=1, healthy=0, preset="tiny", steps=STEPS, device="cpu", overrides=SMALL, preflight=False
    )
    (r,) = bench.runs
    assert not r.detected and r.preflight_failed == [] and not any(c.startswith("preflight.") for c in r.codes)
    assert bench.summary["recall"] == bench.summary["monitor_only_recall"] == 0.0


def test_runner_healthy_runs_and_summary(small_benchmark):
    bench, seen = small_benchmark
    healthy = [r for r in bench.runs if r.fault is None]
    assert [r.seed for r in healthy] == [1000, 1001]
    assert not any(r.detected for r in healthy)
    assert all(r.preflight_failed == [] for r in healthy)  # healthy configs pass the gate's checks
    assert all(r.steps_taken == r.batches_seen == STEPS for r in healthy)  # every step applied
    assert bench.summary["recall"] == 1.0 and bench.summary["false_alarm_rate"] == 0.0
    assert [s[1:] for s in seen] == [(i, 6) for i in range(1, 7)]
    blob = bench.to_json()
    assert set(blob) == {"summary", "runs"} and set(blob["summary"]) == SUMMARY_KEYS
    assert all(set(r) == RUN_KEYS for r in blob["runs"])
    assert [r["fault"] for r in blob["runs"]][-2:] == [None, None]
    json.dumps(blob)  # plain JSON


# -------------------------------------------------------------- --faults-from
USER_FAULTS = '''
from healthcheck.faults import Fault, scale_lr

def _no_head_lr(trainer):
    """Zero the learning rate of every group (a user-written fault)."""
    scale_lr(trainer.optimizer, 0.0, scheduler=trainer.scheduler)

FAULTS = [Fault("user_all_lr_zero", "optimizer", _no_head_lr, expected_codes=("lr.zero",),
                description="every group's learning rate set to 0 by a user fault")]
'''


def load_cli():
    spec = importlib.util.spec_from_file_location("detection_cli", ROOT / "benchmarks" / "detection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_runs_faults_from_a_user_file(tmp_path, capsys):
    path = tmp_path / "my_faults.py"
    path.write_text(USER_FAULTS)
    out = tmp_path / "res" / "det.json"
    code = load_cli().main(
        [
            "--faults-from",
            str(path),
            "--faults",
            "user_all_lr_zero",
            "--seeds",
            "1",
            "--healthy",
            "1",
            "--steps",
            str(STEPS),
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().out
    blob = json.loads(out.read_text())
    assert set(blob["summary"]) == SUMMARY_KEYS
    runs = {r["fault"]: r for r in blob["runs"]}
    assert set(runs) == {"user_all_lr_zero", None}
    assert runs["user_all_lr_zero"]["detected"] and "lr.zero" in runs["user_all_lr_zero"]["codes"]
    assert runs[None]["detected"] is False
    assert "user_all_lr_zero" in capsys.readouterr().out  # the per-fault table names it


def test_cli_rejects_bad_fault_files_and_names(tmp_path, capsys):
    cli = load_cli()
    no_list = tmp_path / "none.py"
    no_list.write_text("X = 1\n")
    assert cli.main(["--faults-from", str(no_list), "--list"]) == 2
    assert "FAULTS" in capsys.readouterr().out
    dup = tmp_path / "dup.py"
    dup.write_text("from healthcheck.faults import Fault\nFAULTS = [Fault('lr_zero', 'schedule', lambda t: None)]\n")
    assert cli.main(["--faults-from", str(dup), "--list"]) == 2
    assert "used twice" in capsys.readouterr().out
    assert cli.main(["--faults", "lr_zer0", "--list"]) == 2
    assert "did you mean 'lr_zero'" in capsys.readouterr().out


def test_load_faults_and_fault_validation(tmp_path):
    path = tmp_path / "f.py"
    path.write_text(USER_FAULTS)
    (f,) = load_faults(path)
    assert f.name == "user_all_lr_zero" and f.family == "optimizer" and f.expected_codes == ("lr.zero",)
    with pytest.raises(ValueError, match="did you mean 'lr.zero'"):
        Fault("x", "schedule", lambda t: None, expected_codes=("lr.zeros",))
    with pytest.raises(ValueError, match="name="):
        Fault("Has Space", "schedule", lambda t: None)
    with pytest.raises(ValueError, match="start_step=-1"):
        Fault("x", "schedule", lambda t: None, start_step=-1)
    with pytest.raises(NotImplementedError):
        Fault("x", "schedule").apply(object())
    with pytest.raises(ValueError, match="FAULTS"):
        load_faults(tmp_path / "missing.py")


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # no optimizer step here
def test_the_probe_follows_a_warmup_but_not_the_decay_of_a_squeezed_schedule():
    from healthcheck.ris.detection import _NoDecay

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    factors = [0.1, 0.5, 1.0, 0.2, 0.05]
    view = _NoDecay(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factors[min(s, 4)]))
    assert view.optimizer is opt
    lrs = []
    for _ in range(4):
        view.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0])  # up with the warm-up, never down with the decay
    # a warm-up that starts at 0 still gives the probe nothing to learn with
    zero = torch.optim.SGD([param], lr=1.0)
    flat = _NoDecay(torch.optim.lr_scheduler.LambdaLR(zero, lambda s: 0.0))
    flat.step()
    assert zero.param_groups[0]["lr"] == 0.0


def test_cli_writes_the_plain_subjects_alone_when_no_ris_run_is_asked_for(tmp_path, capsys):
    """``--subject all --seeds 0 --healthy 0``: the documented way to score the plain subjects."""
    out = tmp_path / "subjects.json"
    code = load_cli().main(["--subject", "all", "--seeds", "0", "--healthy", "0", "--subject-seeds", "1",
                            "--subject-steps", "3", "--json", str(out)])
    assert code == 0, capsys.readouterr().out
    blob = json.loads(out.read_text())
    assert set(blob["by_subject"]) == {"charlm", "imgcls", "autoencoder"}
    assert {r["subject"] for r in blob["subject_runs"]} == {"charlm", "imgcls", "autoencoder"}
    assert "ris" not in blob["by_subject"] and "runs" not in blob

"""The seed report, end to end: the primary loss weight overwritten with 0 at run time.

The config is valid (cov = 1); then, as the origin pipeline's schedule did, something
writes 0 into the live loss after validation. ``ris-model train`` must stop at its first
step, before any optimizer step, with an error event naming the weight, and exit non-zero.
"""

import json

from click.testing import CliRunner

from ris_model.cli import main


def test_train_stops_at_step_zero_naming_the_weight(tmp_path, primary_dropped_at_run_time):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--epochs", "2", "--run-dir", str(run_dir),
                                       "--set", "train.train_scenes=64", "--set", "model.width=32",
                                       "--wandb", "off", "--eval-n", "0"])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    events = [json.loads(l) for l in (run_dir / "health.jsonl").read_text().splitlines()]
    fatal = [e for e in events if e["severity"] in ("error", "critical")]
    assert fatal and fatal[0]["code"] == "weights.primary_zero" and fatal[0]["where"] == "cov"
    assert fatal[0]["step"] == 0
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if l["kind"] == "step"]
    assert steps == [] or all(l["steps_taken"] == 0 for l in steps)  # no optimizer step was applied
    assert lines[-1]["kind"] == "stop" and "cov" in lines[-1]["reason"]
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_the_same_run_without_the_fault_is_healthy(tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--epochs", "1", "--run-dir", str(run_dir),
                                       "--set", "train.train_scenes=64", "--set", "model.width=32",
                                       "--wandb", "off", "--eval-n", "0"])
    assert result.exit_code == 0, result.output
    events = [json.loads(l) for l in (run_dir / "health.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["severity"] in ("warning", "error", "critical")]


def test_a_silenced_code_no_longer_stops_the_run(tmp_path, primary_dropped_at_run_time):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--epochs", "1", "--run-dir", str(run_dir),
                                       "--set", "train.train_scenes=64", "--set", "model.width=32", "--wandb", "off",
                                       "--eval-n", "0", "--health-silence", "weights.primary_zero",
                                       "--health-silence", "loss.primary_share"])
    assert result.exit_code == 0, result.output
    codes = {json.loads(l)["code"] for l in (run_dir / "health.jsonl").read_text().splitlines()}
    assert "weights.primary_zero" not in codes


def test_a_misspelt_code_in_a_flag_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--run-dir", str(tmp_path / "r"),
                                       "--health-silence", "val.platau", "--wandb", "off"])
    assert result.exit_code == 2 and "did you mean 'val.plateau'" in result.output
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--run-dir", str(tmp_path / "r"),
                                       "--health-regrade", "loss.constant", "--wandb", "off"])
    assert result.exit_code == 2 and "CODE=SEVERITY" in result.output

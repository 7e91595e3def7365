"""`healthcheck gate`: exit statuses, progress lines, the table, --json and gate.json."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from healthcheck.cli import cli
from healthcheck.gate import GATE_FILE

FAST = ["--preset", "tiny", "--set", "model.width=32", "--set", "train.batch_size=16", "--device", "cpu"]
CHECKS = ("config", "loss_self_test", "loss_weights", "loss_at_init", "optimizer_coverage", "lr_at_step0",
          "grad_reach", "term_grad_reach", "micro_overfit", "wandb_offline")


def invoke(*args):
    return CliRunner().invoke(cli, ["gate", *map(str, args)], env={"RIS_MODEL_WANDB": "off"})


def test_a_healthy_config_exits_0_with_a_line_per_check_and_a_table(tmp_path):
    res = invoke(*FAST, "--run-dir", tmp_path / "run")
    assert res.exit_code == 0, res.output
    progress = res.stderr.splitlines()
    for name in CHECKS:  # one progress line per check, in order
        assert sum(name in line.split() for line in progress) == 1, (name, res.stderr)
    assert [next(i for i, l in enumerate(progress) if name in l.split()) for name in CHECKS] == \
        sorted(next(i for i, l in enumerate(progress) if name in l.split()) for name in CHECKS)
    assert "gate passed" in res.stdout and "micro_overfit" in res.stdout
    blob = json.loads((tmp_path / "run" / GATE_FILE).read_text())
    assert blob["passed"] is True


def test_json_prints_the_gate_json_content(tmp_path):
    res = invoke(*FAST, "--run-dir", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed == json.loads((tmp_path / GATE_FILE).read_text())
    assert [c["name"] for c in printed["checks"]] == list(CHECKS)


def test_a_config_that_cannot_train_exits_1_and_names_the_check(tmp_path):
    res = invoke(*FAST, "--set", "loss.weights.cov=0", "--run-dir", tmp_path)
    assert res.exit_code == 1, res.output
    assert "config" in res.stdout and "FAILED" in res.stdout and "primary" in res.stdout
    blob = json.loads((tmp_path / GATE_FILE).read_text())
    assert blob["passed"] is False and blob["checks"][0]["name"] == "config"


@pytest.mark.parametrize("args, message", [
    (["--set", "train.lr"], "not of the form dotted.key=value"),
    (["--set", "train.lrr=3e-4"], "did you mean 'train.lr'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--device", "tpu"], "'tpu' is not one of"),
])
def test_usage_errors_exit_2_with_one_sentence(tmp_path, args, message):
    res = invoke("--run-dir", tmp_path, *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / GATE_FILE).exists()


def test_run_dir_is_required():
    res = invoke("--preset", "tiny")
    assert res.exit_code == 2 and "--run-dir" in res.stderr

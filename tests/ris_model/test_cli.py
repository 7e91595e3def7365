import json

import pytest
from click.testing import CliRunner

from ris_model.cli import main

SMALL_RUN = ["--preset", "tiny", "--epochs", "1", "--set", "train.train_scenes=64", "--set", "train.val_scenes=16",
             "--set", "model.width=32", "--wandb", "off", "--no-health"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(main, ["train", *SMALL_RUN, "--run-dir", str(run_dir), "--eval-n", "20"])
    assert result.exit_code == 0, result.output
    return run_dir, result


@pytest.mark.parametrize("args, fragment", [
    (["--set", "train.lrr=1"], "did you mean 'train.lr'"),
    (["--set", "train.lr=-3"], "out of range"),
    (["--set", "loss.weights.cov=0"], "primary loss term"),
    (["--device", "gpu"], "'gpu' is not one of"),
])
def test_bad_input_exits_2_with_one_sentence(tmp_path, args, fragment):
    result = CliRunner().invoke(main, ["train", "--preset", "tiny", "--run-dir", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    assert fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_train_writes_a_run_and_ends_with_an_eval_table_led_by_the_network(trained):
    run_dir, result = trained
    rows = [line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") > 3]
    estimators = [r for r in rows if r and r != "estimator"]
    assert estimators[:2] == ["learned", "learned_fit"]  # the network's own estimate comes first
    assert {"music_ls", "ls_fit", "music_bp", "mvdr_ls", "music_true"} <= set(estimators)
    assert "music_learned" not in result.output
    assert (run_dir / "checkpoints" / "best.pt").is_file()


def test_train_refuses_to_overwrite_a_run(trained):
    run_dir, _ = trained
    result = CliRunner().invoke(main, ["train", *SMALL_RUN, "--run-dir", str(run_dir)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_resume_extends_a_run(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained[0], run_dir)
    result = CliRunner().invoke(main, ["train", "--run-dir", str(run_dir), "--resume", "--epochs", "2",
                                       "--wandb", "off", "--no-health", "--eval-n", "0"])
    assert result.exit_code == 0, result.output
    epochs = [json.loads(l)["epoch"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(epochs)) == [0, 1]


def test_eval_json_has_the_baseline_shape_plus_learned(trained):
    run_dir, _ = trained
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--n", "10", "--snr", "20", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert {"preset", "snr_db", "n", "estimators", "crb"} <= out.keys()
    assert list(out["estimators"]) == ["learned", "learned_fit", "music_ls", "ls_fit", "music_bp", "music_ml",
                                       "mvdr_ls", "music_true"]
    assert out["refine"] == "ml" and out["count"] == "oracle"
    for row in out["estimators"].values():
        assert set(row) == {"rmse_phi_deg", "rmse_theta_deg", "rmse_r_m", "within_1deg", "precision", "recall",
                            "f1", "k_right"}
        assert row["k_right"] == 1.0  # the oracle count
    assert out["estimators"]["music_true"]["rmse_phi_deg"] < 0.05
    rows = out["estimators"]
    assert rows["learned_fit"] != rows["learned"]  # the fit moved the sources
    assert rows["ls_fit"] != rows["music_ls"]
    assert set(out["scenes_per_s"]) == set(rows) and all(v > 0 for v in out["scenes_per_s"].values())
    # a fit's throughput includes its start, so it is never faster than the start alone
    assert out["scenes_per_s"]["learned_fit"] < out["scenes_per_s"]["learned"]
    assert out["scenes_per_s"]["ls_fit"] < out["scenes_per_s"]["music_ls"]


def test_eval_without_refinement_reports_music_on_the_learned_covariance_alone(trained):
    run_dir, _ = trained
    args = ["eval", str(run_dir), "--n", "10", "--snr", "20", "--json"]
    plain = json.loads(CliRunner().invoke(main, [*args, "--refine", "none"]).output)
    refined = json.loads(CliRunner().invoke(main, args).output)
    assert plain["refine"] == "none" and plain["refine_settings"] is None
    assert set(plain["estimators"]) == {"music_true", "music_ls", "music_bp", "music_ml", "mvdr_ls", "learned"}
    assert plain["estimators"]["learned"] == refined["estimators"]["learned"]


def test_eval_changes_only_evaluation_time_settings(trained):
    run_dir, _ = trained
    args = ["eval", str(run_dir), "--n", "6", "--snr", "20", "--json"]
    short = CliRunner().invoke(main, [*args, "--set", "eval.refine_steps=1", "--set", "eval.refine_radius_deg=0.5",
                                      "--set", "eval.refine_moves=0"])
    assert short.exit_code == 0, short.output
    settings = json.loads(short.output)["refine_settings"]
    assert settings == {"eval.refine": "ml", "eval.refine_steps": 1, "eval.refine_radius_deg": 0.5,
                        "eval.refine_moves": 0}
    table = CliRunner().invoke(main, [*args[:-1], "--set", "eval.refine_steps=1", "--set", "eval.refine_moves=3"])
    title = " ".join(table.output.split())  # the title may wrap
    assert table.exit_code == 0 and "(1 steps" in title and "3 rounds of global moves" in title
    for extra, fragment in ((["--set", "model.width=64"], "model.width cannot change at evaluation"),
                            (["--set", "eval.refine_step=3"], "did you mean 'eval.refine_steps'"),
                            (["--set", "model.refine_steps=3"], "'model.refine_steps' is now 'eval.refine_steps'"),
                            (["--refine", "none", "--set", "eval.refine=ml"], "contradicts")):
        refused = CliRunner().invoke(main, [*args, *extra])
        assert refused.exit_code == 2 and fragment in refused.output, refused.output
        assert "Traceback" not in refused.output


def test_eval_reads_a_run_dir_that_kept_the_refine_keys_under_model(trained, tmp_path):
    import shutil

    run_dir, _ = trained
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    blob = json.loads((old / "config.json").read_text())
    # such runs had the four refine keys under model and no eval section (nor its later keys)
    refine_keys = {k: v for k, v in blob["config"].pop("eval").items() if k.startswith("refine")}
    assert len(refine_keys) == 4
    blob["config"]["model"].update(refine_keys, refine="none")
    blob["sources"] = {k.replace("eval.", "model.", 1): v for k, v in blob["sources"].items()
                       if not k.startswith("eval.") or k[len("eval."):] in refine_keys}
    (old / "config.json").write_text(json.dumps(blob))
    result = CliRunner().invoke(main, ["eval", str(old), "--n", "4", "--snr", "20", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["refine"] == "none"


def test_eval_of_a_missing_run_dir_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_config_keys_lists_every_key():
    result = CliRunner().invoke(main, ["config", "--keys"])
    assert result.exit_code == 0 and "loss.weights.cov" in result.output and "train.lr" in result.output


def test_evaluation_reports_the_learned_rows_lead_with_intervals(trained):
    from ris_model.evaluation.bootstrap import LEAD_KEYS
    from ris_model.evaluation.evaluate import evaluate_run

    run_dir, _ = trained
    out = evaluate_run(run_dir, n=12, snr_db=20.0, lead_resamples=100)
    pairs, rows = out["lead"]["pairs"], out["estimators"]
    assert [(p["row"], p["over"]) for p in pairs] == [("learned", "music_ls"), ("learned", "music_bp"),
                                                      ("learned", "music_ml"), ("learned_fit", "ls_fit")]
    assert out["lead"]["resamples"] == 100
    for lead in pairs:
        assert all(lead[key]["low"] <= lead[key]["high"] for key in LEAD_KEYS)
        # the sign convention: positive is the row's lead over the one it is compared with
        row, over = rows[lead["row"]], rows[lead["over"]]
        assert lead["rmse_phi_deg"]["lead"] == pytest.approx(over["rmse_phi_deg"] - row["rmse_phi_deg"])
        assert lead["within_1deg"]["lead"] == pytest.approx(row["within_1deg"] - over["within_1deg"])
    assert "lead" not in evaluate_run(run_dir, n=4, snr_db=20.0, refine="none")
    plain = evaluate_run(run_dir, n=4, snr_db=20.0, refine="none", lead_resamples=20)
    assert [(p["row"], p["over"]) for p in plain["lead"]["pairs"]] == [("learned", "music_ls"),
                                                                       ("learned", "music_bp"),
                                                                       ("learned", "music_ml")]


def test_eval_bootstrap_adds_the_lead_to_the_json_and_a_table(trained):
    run_dir, _ = trained
    args = ["eval", str(run_dir), "--n", "8", "--snr", "20", "--set", "eval.refine_steps=5", "--bootstrap", "50"]
    out = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    assert len(out["lead"]["pairs"]) == 4 and out["lead"]["resamples"] == 50
    table = CliRunner().invoke(main, args)
    text = " ".join(table.output.split())
    assert table.exit_code == 0 and "leads [95% interval" in text and "learned_fit" in text
    refused = CliRunner().invoke(main, [*args[:-1], "-1"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output


def test_eval_with_k_auto_estimates_the_count_and_reports_detection(trained):
    run_dir, _ = trained
    args = ["eval", str(run_dir), "--n", "12", "--snr", "20", "--set", "eval.refine_steps=5",
            "--set", "eval.refine_moves=0"]
    out = json.loads(CliRunner().invoke(main, [*args, "--k", "auto", "--json"]).output)
    assert out["count"] == "auto"
    rows = out["estimators"]
    for name, row in rows.items():
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and 0 <= row["k_right"] <= 1, name
        p, r = row["precision"], row["recall"]
        assert row["f1"] == pytest.approx(0 if p + r == 0 else 2 * p * r / (p + r)), name
    # the exact covariance has rank K: its eigenvalues give the count and MUSIC the sources
    assert rows["music_true"]["k_right"] == 1.0 and rows["music_true"]["f1"] == 1.0
    table = CliRunner().invoke(main, [*args, "--k", "auto"])
    text = " ".join(table.output.split())
    assert table.exit_code == 0 and "K estimated on each row's covariance (MDL)" in text and "F1" in text
    for bad in ("0", "many"):
        refused = CliRunner().invoke(main, [*args, "--k", bad])
        assert refused.exit_code == 2 and "'auto'" in refused.output and "Traceback" not in refused.output
    too_many = CliRunner().invoke(main, [*args, "--k", "9"])
    assert too_many.exit_code == 2 and "k_max" in too_many.output


def test_baseline_command_takes_k_auto_and_refuses_a_bad_count():
    args = ["baseline", "--preset", "tiny", "--snr", "20", "--n", "2", "--json"]
    out = json.loads(CliRunner().invoke(main, [*args, "--k", "auto"]).output)
    assert out["count"] == "auto" and out["count_rule"] == "MDL"
    assert out["estimators"]["music_true"]["k_right"] == 1.0
    fixed = json.loads(CliRunner().invoke(main, [*args, "--k", "2"]).output)
    assert fixed["count"] == "oracle" and fixed["count_rule"] is None
    for bad, fragment in (("3", "k_max=2"), ("two", "'auto'")):
        refused = CliRunner().invoke(main, [*args, "--k", bad])
        assert refused.exit_code == 2 and fragment in refused.output and "Traceback" not in refused.output

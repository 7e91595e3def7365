"""Values that were accepted and then crashed (or hung) later: each is now refused up
front with one sentence and exit status 2."""

import pytest
from cli_cases import QUIET, TINY, invoke, one_sentence, trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory, "values")


HUGE = [str(2**63), str(2**64), str(10**30)]


@pytest.mark.parametrize("seed", HUGE)
@pytest.mark.parametrize("command", [["baseline", "--preset", "tiny", "--snr", "10", "--n", "1"],
                                     ["simulate", "--preset", "tiny", "--n", "1", "--out", "{tmp}/d"]])
def test_huge_seeds_are_refused(tmp_path, seed, command):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    one_sentence(invoke(*args, "--seed", seed), "--seed")


@pytest.mark.parametrize("seed", HUGE)
def test_a_huge_train_seed_is_refused(tmp_path, seed):
    one_sentence(invoke("train", *TINY, "--set", f"train.seed={seed}", *QUIET, "--run-dir", tmp_path / "r"),
                 "train.seed")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "1e6", "81", "-51"])
def test_a_non_finite_or_absurd_snr_is_refused(run, value):
    one_sentence(invoke("baseline", "--preset", "tiny", "--snr", value, "--n", "1"), "--snr")
    one_sentence(invoke("eval", run, "--snr", value, "--n", "1"), "--snr")


@pytest.mark.parametrize("k", [3, 99])
def test_eval_refuses_more_sources_than_the_run_allows(run, k):
    one_sentence(invoke("eval", run, "--k", k, "--n", "1", "--refine", "none"), "k_max")


def test_a_deeply_nested_schedule_is_refused():
    one_sentence(invoke("config", "--set", "loss.schedule=" + "[" * 100_000), "loss.schedule")


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[train]\nlr = 1\n\xff\xfe")
    one_sentence(invoke("config", "--config", path), "bad.toml", "UTF-8")


@pytest.mark.parametrize("item", ["train.epochs", "=3", " =3"])
def test_resume_refuses_a_set_without_key_and_value(run, item):
    one_sentence(invoke("train", "--run-dir", run, "--resume", "--set", item, *QUIET), "--set")


@pytest.mark.parametrize("name, text", [("p.toml", b"[actions\n"), ("p.yaml", b"a: [\n- {"),
                                        ("p.json", b"{"), ("p.toml", b"\xff")])
def test_train_refuses_a_health_policy_that_does_not_parse(tmp_path, name, text):
    policy = tmp_path / name
    policy.write_bytes(text)
    one_sentence(invoke("train", *TINY, "--epochs", "1", "--wandb", "off", "--eval-n", "0",
                        "--health-policy", policy, "--run-dir", tmp_path / "r"), name)

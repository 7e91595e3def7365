from __future__ import annotations

import json

import pytest

from healthcheck.events import HealthEvent, Severity
from healthcheck.policy import Policy, PolicyError


def ev(code, severity):
    return HealthEvent(code=code, severity=severity, step=1, time=0.0, title="t")


@pytest.mark.parametrize("severity, context, action", [
    ("critical", "train", "stop"), ("critical", "hpo", "prune"),
    ("error", "train", "warn"), ("error", "hpo", "prune"), ("error", "gate", "stop"),
    ("warning", "train", "warn"), ("warning", "hpo", "warn"), ("info", "train", "record"),
])
def test_default_actions(severity, context, action):
    assert Policy().decide("grad.zero", Severity.parse(severity), context) == (Severity.parse(severity), action)


def test_silence_drops_the_event():
    p = Policy(silence=["val.plateau", "amp.*"])
    assert p.apply(ev("val.plateau", "warning")) == (None, "record")
    assert p.apply(ev("amp.overflow", "warning"))[0] is None
    assert p.apply(ev("val.constant", "error"))[0] is not None


def test_regrade_changes_severity_and_thus_action():
    p = Policy(regrade={"loss.constant": "error"})
    event, action = p.apply(ev("loss.constant", "warning"), "hpo")
    assert event.severity is Severity.ERROR and action == "prune"


def test_exact_code_beats_glob_and_longer_glob_beats_shorter():
    p = Policy({"grad.*": "stop", "grad.v*": "record", "grad.vanishing": "warn", "*": "record"})
    assert p.decide("grad.vanishing", Severity.WARNING)[1] == "warn"
    assert p.decide("grad.zero", Severity.WARNING)[1] == "stop"
    assert p.decide("loss.zero", Severity.ERROR)[1] == "record"


def test_prune_outside_hpo_becomes_stop():
    p = Policy({"loss.diverging": "prune"})
    assert p.decide("loss.diverging", Severity.ERROR, "hpo")[1] == "prune"
    assert p.decide("loss.diverging", Severity.ERROR, "train")[1] == "stop"


def test_severity_table_override_per_context():
    p = Policy(severity={"error": {"train": "stop"}, "warning": "record"})
    assert p.decide("grad.zero", Severity.ERROR, "train")[1] == "stop"
    assert p.decide("grad.vanishing", Severity.WARNING, "hpo")[1] == "record"


def test_unknown_code_names_the_closest_valid_one():
    with pytest.raises(PolicyError, match="'grad.nonfinit'.*did you mean 'grad.nonfinite'"):
        Policy(silence=["grad.nonfinit"])
    with pytest.raises(PolicyError, match="pattern 'gard.\\*' matches no event code"):
        Policy({"gard.*": "stop"})


def test_unknown_action_and_context_list_choices():
    with pytest.raises(PolicyError, match="record, warn, stop, prune.*'halt'"):
        Policy({"grad.zero": "halt"})
    with pytest.raises(PolicyError, match="'sweep'"):
        Policy().decide("grad.zero", Severity.ERROR, "sweep")
    with pytest.raises(ValueError, match="'fatal'"):
        Policy(regrade={"grad.zero": "fatal"})


def test_env_vars_silence_and_regrade():
    env = {"HEALTHCHECK_SILENCE": "val.plateau, lr.tiny", "HEALTHCHECK_REGRADE": "loss.constant=critical"}
    p = Policy.from_env(env)
    assert p.apply(ev("lr.tiny", "warning"))[0] is None
    assert p.decide("loss.constant", Severity.WARNING, "train") == (Severity.CRITICAL, "stop")
    assert Policy.from_env({}).to_dict() == Policy().to_dict()


def test_env_errors_are_explained():
    with pytest.raises(PolicyError, match="code=severity.*'loss.constant'"):
        Policy.from_env({"HEALTHCHECK_REGRADE": "loss.constant"})
    with pytest.raises(PolicyError, match="HEALTHCHECK_SILENCE.*did you mean 'lr.tiny'"):
        Policy.from_env({"HEALTHCHECK_SILENCE": "lr.tiney"})


def test_env_layers_on_a_policy_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"actions": {"grad.*": "stop"}}))
    p = Policy.from_env({"HEALTHCHECK_POLICY": str(path), "HEALTHCHECK_SILENCE": "grad.vanishing"})
    assert p.decide("grad.zero", Severity.ERROR, "train")[1] == "stop"
    assert p.decide("grad.vanishing", Severity.WARNING, "train")[0] is None


POLICY_TOML = """
silence = ["val.plateau"]
[actions]
"grad.*" = "stop"
[regrade]
"loss.constant" = "error"
[severity.error]
train = "stop"
"""
POLICY_YAML = """
silence: [val.plateau]
actions: {"grad.*": stop}
regrade: {loss.constant: error}
severity: {error: {train: stop}}
"""


@pytest.mark.parametrize("name, text", [
    ("p.toml", POLICY_TOML), ("p.yaml", POLICY_YAML),
    ("p.json", json.dumps({"silence": ["val.plateau"], "actions": {"grad.*": "stop"},
                           "regrade": {"loss.constant": "error"}, "severity": {"error": {"train": "stop"}}})),
])
def test_policy_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    p = Policy.from_file(path)
    assert p.decide("val.plateau", Severity.WARNING)[0] is None
    assert p.decide("grad.vanishing", Severity.WARNING)[1] == "stop"
    assert p.decide("loss.constant", Severity.WARNING, "train") == (Severity.ERROR, "stop")


def test_policy_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('silence = ["loss.zeroo"]\n')
    with pytest.raises(PolicyError, match="bad.toml.*did you mean 'loss.zero'"):
        Policy.from_file(path)
    path = tmp_path / "bad.yaml"
    path.write_text("actionz: {}\n")
    with pytest.raises(PolicyError, match="'actionz'.*valid keys"):
        Policy.from_file(path)
    with pytest.raises(PolicyError, match=".ini"):
        Policy.from_file(tmp_path / "p.ini")

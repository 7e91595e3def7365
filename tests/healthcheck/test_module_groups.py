"""Per-module norms are reported for the deepest modules that own parameters, at most
``max_groups`` of them, and the grouping is written to the run dir's modules.json."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import healthcheck
from healthcheck.events import Severity, read_events
from healthcheck.live import ModuleNorms, module_groups, reported_module
from healthcheck.monitor import judge_records
from healthcheck.record import read_records


def test_each_parameter_goes_to_the_module_that_owns_it():
    names = ["transformer.wte.weight", "transformer.h.0.attn.weight", "transformer.h.0.attn.bias",
             "transformer.h.1.mlp.0.weight", "lm_head.weight", "scale"]
    groups, depth = module_groups(names)
    assert groups == ("transformer.wte", "transformer.h.0.attn", "transformer.h.0.attn",
                      "transformer.h.1.mlp.0", "lm_head", "_root")
    assert depth is None


def test_too_many_owners_are_cut_to_the_deepest_depth_within_the_bound():
    # 3 blocks x 3 layers + 1 embedding = 10 owners; at depth 3: wte + 3 blocks = 4 groups
    names = ["t.wte.weight"] + [f"t.h.{b}.{layer}.weight" for b in range(3) for layer in ("a", "b", "c")]
    groups, depth = module_groups(names, max_groups=5)
    assert depth == 3 and set(groups) == {"t.wte", "t.h.0", "t.h.1", "t.h.2"}
    assert groups[1:4] == ("t.h.0",) * 3
    # a bound of 1 cuts to the top level
    assert module_groups(names, max_groups=1) == (("t",) * len(names), 1)


def test_top_level_children_beyond_the_bound_share_named_ranges():
    names = [f"{i}.weight" for i in range(10)]  # an nn.Sequential of 10 layers as the model
    groups, depth = module_groups(names, max_groups=4)
    assert depth == 1 and len(set(groups)) <= 4
    assert groups[0] == "0..2" and groups[-1] == "9"
    assert list(dict.fromkeys(groups)) == ["0..2", "3..5", "6..8", "9"]


def test_a_model_with_more_than_64_owners_gets_at_most_64_groups_deterministically():
    def model():
        return nn.ModuleDict({"blocks": nn.ModuleList(
            nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 2)) for _ in range(30))})

    a, b = ModuleNorms(model()), ModuleNorms(model())
    assert len(a.modules) == 30 and a.modules == b.modules and a.members == b.members
    assert a.modules[0] == "blocks.0" and a.depth == 2
    assert a.members["blocks.0"] == ("blocks.0.0.weight", "blocks.0.0.bias", "blocks.0.1.weight",
                                     "blocks.0.1.bias", "blocks.0.2.weight", "blocks.0.2.bias")
    assert sum(len(v) for v in a.members.values()) == len(a.names)  # every parameter once


def test_a_parameter_is_reported_under_the_module_a_record_names():
    fine = {"transformer.h.0.attn", "transformer.h", "lm_head", "_total"}
    assert reported_module("transformer.h.0.attn.weight", fine) == "transformer.h.0.attn"
    assert reported_module("transformer.h.1.mlp.weight", fine) == "transformer.h"
    # records grouped by top-level module (the ris_model Trainer's) keep that name
    assert reported_module("transformer.h.0.attn.weight", {"transformer", "lm_head"}) == "transformer"
    assert reported_module("scale", fine) == "_root"
    assert reported_module("other.0.weight", fine) == "other.0"  # not in the record: its owner


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_bound_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_groups"):
        module_groups(["a.weight"], bad)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.mlp(torch.tanh(self.attn(x)))


class OneContainer(nn.Module):
    """Everything under one ModuleDict, as minimal-GPT code keeps it."""

    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict({"inp": nn.Linear(4, 8),
                                          "h": nn.ModuleList(Block() for _ in range(3)),
                                          "out": nn.Linear(8, 1)})

    def forward(self, x):
        x = self.transformer["inp"](x)
        for block in self.transformer["h"]:
            x = block(x)
        return self.transformer["out"](x)


def _train(run_dir, *, blocked: bool, steps: int = 8, **kw):
    torch.manual_seed(0)
    model = OneContainer()
    inner = model.transformer["h"][1].mlp
    others = [p for p in model.parameters() if all(p is not q for q in inner.parameters())]
    # the fault: the inner block's parameter group has a learning rate of 0
    opt = torch.optim.Adam([{"params": others}, {"params": list(inner.parameters()),
                                                  "lr": 0.0 if blocked else 1e-2}], lr=1e-2)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with healthcheck.TrainingHealth(model, opt, run_dir, console=False, **kw) as health:
        for _ in range(steps):
            opt.zero_grad()
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            health.after_backward(loss)
            opt.step()
            health.after_step()
    return health


def _frozen(events):
    return {e.where for e in events if e.code == "param.frozen" and e.severity >= Severity.ERROR}


def test_a_frozen_block_inside_one_container_is_named(tmp_path):
    _train(tmp_path, blocked=True)
    assert _frozen(read_events(tmp_path / "health.jsonl")) == {"transformer.h.1.mlp"}
    # judged again from the metrics file alone, the same module is named
    assert _frozen(judge_records(read_records(tmp_path / "metrics.jsonl"))) == {"transformer.h.1.mlp"}


def test_the_same_model_trained_whole_is_quiet(tmp_path):
    _train(tmp_path, blocked=False)
    events = read_events(tmp_path / "health.jsonl")
    assert [e for e in events if e.severity >= Severity.WARNING] == []


def test_the_grouping_is_written_to_the_run_dir(tmp_path):
    health = _train(tmp_path, blocked=False, steps=1, max_groups=3)
    written = json.loads((tmp_path / "modules.json").read_text())
    assert written["schema"] == 1 and written["max_groups"] == 3 and written["depth"] == 2
    assert list(written["groups"]) == ["transformer.inp", "transformer.h", "transformer.out"]
    assert written["groups"]["transformer.inp"] == ["transformer.inp.weight", "transformer.inp.bias"]
    assert len(written["groups"]["transformer.h"]) == 12
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert set(line["grad_norm"]) == set(written["groups"]) | {"_total"}
    assert set(line["update_norm"]) == set(line["param_norm"]) == set(written["groups"])
    assert health.norms.grouping()["groups"] == written["groups"]


def test_no_run_dir_writes_no_grouping(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _train(None, blocked=False, steps=1)
    assert list(tmp_path.iterdir()) == []

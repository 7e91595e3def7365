"""What the hostile-input tests of `ris-model` share: a training set-up small enough to
run in a second, and the check that an error is one sentence with exit 2."""

from __future__ import annotations

from click.testing import CliRunner

from ris_model.cli import main
from tests.hostile import one_sentence

__all__ = ["QUIET", "TINY", "invoke", "one_sentence", "trained_run"]

TINY = ["--preset", "tiny", "--set", "train.train_scenes=32", "--set", "train.val_scenes=8",
        "--set", "train.batch_size=16", "--set", "model.width=16", "--set", "model.depth=1"]
QUIET = ["--wandb", "off", "--no-health", "--eval-n", "0"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def trained_run(tmp_path_factory, name):
    """A finished one-epoch run dir (tests that change it copy it first)."""
    run_dir = tmp_path_factory.mktemp(name) / "run"
    result = invoke("train", *TINY, "--epochs", "1", *QUIET, "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    return run_dir

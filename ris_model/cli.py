"""``ris-model``: simulate scenes, run the classical baselines, train and evaluate.

Every option can also come from the environment with the ``RIS_MODEL_`` prefix (e.g.
``RIS_MODEL_TRAIN_DEVICE=cpu``). A user error (bad config key or value, missing run dir)
ends with one sentence and exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys

# OpenMP threads that spin while waiting steal the CPU from each other on small, shared
# machines (a 10x slowdown measured on 2 loaded cores); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ris_model.config import PRESETS, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from ris_model.baseline import Count

PRESET = click.Choice(sorted(PRESETS))
DEVICE = click.Choice(["auto", "cpu", "cuda"])


class SourceCount(click.ParamType):
    """``--k``: a positive int (every scene has that many sources, told to every estimator)
    or ``auto`` (K drawn per scene and estimated from the data by every estimator)."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            k = int(value)
        except (TypeError, ValueError):
            k = 0
        if k < 1:
            self.fail(f"{value!r} is neither a positive number of sources nor 'auto' (K estimated from the data)",
                      param, ctx)
        return k


def _scene_count(k: int | str | None) -> tuple[int | None, Count]:
    """(sources per scene or None, "oracle" or "auto") from ``--k``."""
    if k == "auto":
        return None, "auto"
    return (None if k is None else int(k)), "oracle"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can fix into click's clean ``Error: ...`` (exit 2): a bad
    setting or run file (`ConfigError`), and a file or folder the system refuses (an
    ``OSError``: missing, read-only, full, a planted link)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        except OSError as exc:
            raise click.UsageError(_os_sentence(exc)) from None

    return wrapper


def _os_sentence(exc: OSError) -> str:
    """``OSError`` as one sentence: ours already are; the system's name the file and the cause."""
    if exc.filename is None or exc.strerror is None:
        return str(exc)
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{target}: {exc.strerror}"


# Seeds go to torch and numpy generators, which take at most 64 bits, and are combined
# with epoch and worker numbers; 32 bits leaves room for those and is plenty of runs.
SEED = click.IntRange(min=0, max=2**32 - 1)


class FiniteFloat(click.ParamType):
    """A float that is a number: ``nan`` and ``inf`` are refused where they would only
    crash or poison a computation later."""

    name = "float"

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.lo is not None and x < self.lo) or (self.hi is not None and x > self.hi):
            self.fail(f"{value!r} is not in the range {self.lo:g} to {self.hi:g}", param, ctx)
        return x


# The SNR of simulated scenes, in dB: the range a config's system.snr_*_db may take. Beyond
# 80 dB the noise is below float64 resolution and the covariance stops being positive definite.
SNR_DB = FiniteFloat(-50.0, 80.0)


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="Override one config value, e.g. --set train.lr=3e-4 (repeatable).")(fn)
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                      help="A .toml, .yaml or .json config file (applied over the preset).")(fn)
    fn = click.option("--preset", type=PRESET, default=None, help="System preset (default: small).")(fn)
    return fn


def _load(preset: str | None, config_file: str | None, overrides: tuple[str, ...]):
    from ris_model.config import load_config

    return load_config(preset, config_file, list(overrides))


def _pairs(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise click.UsageError(f"{item!r} is not of the form CODE=SEVERITY, e.g. loss.constant=error")
        out[key.strip()] = value.strip()
    return out


def _print_table(table: Any) -> None:
    from ris_model.baseline import table_console

    table_console(min_width=150).print(table)  # off a terminal: room for every column of an estimated K


@click.group(context_settings={"auto_envvar_prefix": "RIS_MODEL", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ris-health")
def main() -> None:
    """RIS-assisted multi-source localisation: simulate, baseline, train, evaluate."""


@main.command()
@config_options
@click.option("--keys", is_flag=True, help="List every config key with its type, default and meaning.")
@user_errors
def config(preset, config_file, overrides, keys):
    """Print the resolved config (with each value's source) as JSON."""
    if keys:
        from ris_model.config import describe_keys

        for key, type_name, default, doc in describe_keys():
            click.echo(f"{key:34} {type_name:22} {default!s:10} {doc}")
        return
    click.echo(json.dumps(_load(preset, config_file, overrides).to_json(), indent=2))


@main.command()
@config_options
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Number of scenes.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Dataset directory to write.")
@click.option("--shard-size", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a dataset already in --out.")
@user_errors
def simulate(preset, config_file, overrides, n, seed, out, shard_size, overwrite):
    """Simulate N scenes and write them as cached shards with a manifest."""
    from ris_model.data import write_dataset

    cfg = _load(preset, config_file, overrides)
    try:
        path = write_dataset(cfg.system, n, seed, out, shard_size=shard_size, overwrite=overwrite)
    except FileExistsError:
        raise click.UsageError(f"{out!r} already holds a dataset; pass --overwrite to replace it") from None
    click.echo(f"wrote {n} {cfg.system.preset} scenes to {path}")


@main.command()
@config_options
@click.option("--snr", "snr_db", type=SNR_DB, required=True, help="SNR in dB for every scene.")
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--k", "k", type=SourceCount(), default=None,
              help="Sources per scene, told to every estimator (default: drawn per scene, oracle count); "
                   "'auto': drawn per scene and estimated from the data, with detection precision/recall/F1.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@user_errors
def baseline(preset, config_file, overrides, snr_db, n, k, seed, as_json):
    """Classical estimators and the CRB on N simulated scenes: the yardstick for learning."""
    from ris_model.baseline import render_baseline, run_baseline

    cfg = _load(preset, config_file, overrides)
    k, count = _scene_count(k)
    if k is not None and k > cfg.system.k_max:
        raise click.UsageError(f"--k {k} is more than this preset's k_max={cfg.system.k_max}")
    result = run_baseline(cfg, snr_db=snr_db, n=n, k=k, seed=seed, count=count)
    if as_json:
        click.echo(json.dumps(result))
    else:
        _print_table(render_baseline(result))


@main.command()
@config_options
@click.option("--run-dir", type=click.Path(file_okay=False), required=True, help="Where the run is written.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Shortcut for --set train.epochs=E.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--resume", "resume", is_flag=True, help="Continue the run in --run-dir from checkpoints/last.pt.")
@click.option("--wandb", "wandb_mode", type=click.Choice(["off", "offline", "online"]), default=None,
              envvar="RIS_MODEL_WANDB", help="W&B mode (default offline; env RIS_MODEL_WANDB).")
@click.option("--no-health", is_flag=True, help="Do not attach the health monitor.")
@click.option("--health-policy", type=click.Path(dir_okay=False, exists=True), default=None,
              help="A health policy file (TOML/YAML/JSON) for the monitor.")
@click.option("--health-silence", multiple=True, metavar="CODE",
              help="Silence a health event code or glob, e.g. val.plateau (repeatable).")
@click.option("--health-regrade", multiple=True, metavar="CODE=SEVERITY",
              help="Re-grade a health event code, e.g. loss.constant=error (repeatable).")
@click.option("--eval-n", type=click.IntRange(min=0), default=200, show_default=True,
              help="Held-out scenes for the closing eval table (0 skips it).")
@user_errors
def train(preset, config_file, overrides, run_dir, epochs, device, resume, wandb_mode, no_health,
          health_policy, health_silence, health_regrade, eval_n):
    """Train the covariance network, monitored, and end with an eval table."""
    from ris_model.training.run import train_command

    overrides = list(overrides) + ([f"train.epochs={epochs}"] if epochs is not None else [])
    code = train_command(preset=preset, config_file=config_file, overrides=overrides, run_dir=Path(run_dir),
                         device=device, resume=resume, wandb_mode=wandb_mode, health=not no_health,
                         health_policy=health_policy, eval_n=eval_n,
                         health_silence=list(health_silence), health_regrade=_pairs(health_regrade))
    sys.exit(code)


@main.command()
@config_options
@click.option("--study-dir", type=click.Path(file_okay=False), required=True,
              help="Where the study's trials, SQLite storage and gate.json live.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Finished trials wanted in the whole study, all workers together (default hpo.trials).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per trial (default hpo.epochs).")
@click.option("--storage", default=None, metavar="URL",
              help="Database URL shared by workers, e.g. postgresql://user:pw@host/db (default: SQLite, study dir).")
@click.option("--study", "study_name", default="ris-model", show_default=True, help="Study name in the storage.")
@click.option("--gate", "gate_mode", type=click.Choice(["require", "auto", "skip"]), default="require",
              show_default=True, help="require: a passing gate.json for this config; auto: run the gate first.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Sampler base seed: trial N draws from a stream seeded by (seed, N), so workers never repeat.")
@user_errors
def hpo(preset, config_file, overrides, study_dir, trials, epochs, storage, study_name, gate_mode, device, seed):
    """Hyper-parameter search with optuna, gated on health and watched by it."""
    from rich.console import Console

    from ris_model.hpo import StudySettings, gate_status, render_study, run_gate_plugin, run_study
    from ris_model.safe_files import writable_dir

    console = Console(stderr=True)
    cfg = _load(preset, config_file, overrides)
    study_path = Path(study_dir)
    writable_dir(study_path)  # fails now, not after the gate or the first trial
    if gate_mode == "auto":
        console.print("running the gate first (--gate auto)")
        run_gate_plugin(cfg, study_path, device)
    if gate_mode != "skip":
        ok, why = gate_status(study_path, cfg)
        if not ok:
            raise click.UsageError(f"refusing to start HPO: {why}")
        console.print(why)
    else:
        console.print("[yellow]warning:[/] --gate skip: HPO runs without a preflight gate")
    settings = StudySettings(study_dir=study_path, study_name=study_name, storage=storage,
                             trials=trials or cfg.hpo.trials, epochs=epochs or cfg.hpo.epochs,
                             device=device, seed=seed)
    study = run_study(cfg, settings, log=lambda m: console.print(m, highlight=False))
    _print_table(render_study(study))


@main.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--snr", "snr_db", type=SNR_DB, default=10.0, show_default=True)
@click.option("--k", "k", type=SourceCount(), default=None,
              help="Sources per scene, told to every row (default: drawn per scene, oracle count); 'auto': "
                   "drawn per scene and estimated from the data by every row, with detection precision/recall/F1.")
@click.option("--seed", type=SEED, default=12345, show_default=True)
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--refine", type=click.Choice(["ml", "none"]), default=None,
              help="Fit MUSIC's sources to the snapshots by maximum likelihood (default: the run's eval.refine).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change an evaluation-time setting of the run, e.g. --set eval.refine_steps=300 (repeatable).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Add the leads of learned over music_ls, music_bp and music_ml, and of learned_fit over ls_fit, "
                   "with 95% intervals from N paired resamples of the scenes (0: none).")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def evaluate(run_dir, n, snr_db, k, seed, checkpoint, device, refine, overrides, bootstrap, as_json):
    """The network's own estimate (learned), the snapshot fit from it and from MUSIC on R_ls
    (learned_fit, ls_fit), the classical baselines and the CRB."""
    from ris_model.baseline import render_baseline, render_lead
    from ris_model.config import parse_set_args
    from ris_model.evaluation.evaluate import evaluate_run

    k, count = _scene_count(k)
    result = evaluate_run(Path(run_dir), n=n, snr_db=snr_db, k=k, count=count, seed=seed, checkpoint=checkpoint,
                          device=device, refine=refine, overrides=parse_set_args(overrides), lead_resamples=bootstrap)
    if as_json:
        click.echo(json.dumps(result))
        return
    _print_table(render_baseline(result))
    if "lead" in result:
        _print_table(render_lead(result))


if __name__ == "__main__":
    main()

"""`healthcheck …`: the command line of the harness.

One click group; each command is a thin function that turns options into a call of the
module that does the work, so the work stays testable without click. Every option can
also come from the environment as HEALTHCHECK_<COMMAND>_<OPTION> (for example
HEALTHCHECK_WATCH_FAIL_ON=warning). A mistake of the user (a missing run dir, a format
that is not there) is a `HealthcheckUsageError`: one sentence, exit status 2, no traceback.
"""

from __future__ import annotations

import functools
import os
import sys

# OpenMP threads that spin while waiting steal the CPU from each other on small, shared
# machines (a 10x slowdown measured on 2 loaded cores); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import dataclass
from typing import Any

import click

from .safe_files import RunFileError
from .watch.reading import FORMATS, KeyMap, RunLogError

ENV_PREFIX = "HEALTHCHECK"
SEVERITY_CHOICES = ("warning", "error", "critical")


class HealthcheckUsageError(click.UsageError):
    """A bad argument or an unreadable run dir: exit 2 with one clear sentence."""

    def show(self, file: Any = None) -> None:
        """The sentence alone on stderr: it says what to fix; the usage text would not."""
        click.echo(f"Error: {self.format_message()}", file=file, err=True)


@dataclass
class CliContext:
    """What every command receives (`ctx.obj`)."""

    color: bool | None = None  # None: decide from the terminal (and NO_COLOR)


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


@click.group(context_settings={"auto_envvar_prefix": ENV_PREFIX,
                               "help_option_names": ["-h", "--help"]})
@click.option("--color/--no-color", default=None,
              help="Force colours on or off [default: on for a terminal, unless NO_COLOR is set].")
@click.pass_context
def cli(ctx: click.Context, color: bool | None) -> None:
    """Training-health checks for PyTorch runs: watch a run, report on it, gate it."""
    ctx.obj = CliContext(color=color)
    if color is not None:
        ctx.color = color


# ------------------------------------------------------------------ shared pieces
INTERNAL_ERROR = 3  # the exit status of a bug in healthcheck: never 1, which means "unhealthy"


def _usage_errors(fn):
    """Report `RunLogError` (the user's input is wrong) and `RunFileError` (an output that
    cannot be written safely) as a click usage error (exit 2), and any other exception as
    an internal error (exit 3), so that no crash can read as a verdict.
    HEALTHCHECK_TRACEBACK=1 shows the traceback of an internal error."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RunLogError, RunFileError) as err:
            raise HealthcheckUsageError(_clean(str(err))) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:
            if os.environ.get("HEALTHCHECK_TRACEBACK"):
                raise
            click.echo(f"Error: internal error in healthcheck ({type(err).__name__}: {_clean(str(err))[:300]}); "
                       "this is a bug: please report it with the run dir, or rerun with "
                       "HEALTHCHECK_TRACEBACK=1 for the traceback", err=True)
            raise SystemExit(INTERNAL_ERROR) from None
    return wrapper


def _clean(text: str) -> str:
    from .watch.view import clean

    return clean(text)


def _key_options(fn):
    """Options that name the columns of a CSV / TensorBoard log."""
    opts = [
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                     help="Format of the run's metrics; auto picks metrics.jsonl, then "
                          "metrics.csv (Lightning CSVLogger), then TensorBoard event files."),
        click.option("--loss-key", default=None, metavar="NAME",
                     help="Column/tag of the training loss (default: train_loss_step, "
                          "train_loss, train/loss, loss …)."),
        click.option("--val-loss-key", default=None, metavar="NAME",
                     help="Column/tag of the validation loss (default: val_loss, val/loss …)."),
        click.option("--lr-key", default=None, metavar="NAME",
                     help="Column/tag of the learning rate; NAME/… columns are further "
                          "param groups (default: lr-* columns)."),
        click.option("--step-key", default=None, metavar="NAME",
                     help="Column of the global step (default: step)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _policy_option(fn):
    return click.option(
        "--policy", "policy_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
        default=None, metavar="FILE",
        help="Policy file (.toml/.yaml/.json) that silences or re-grades codes; "
             "HEALTHCHECK_SILENCE and HEALTHCHECK_REGRADE apply on top.")(fn)


def _policy(path: str | None):
    from .policy import Policy, PolicyError
    from .watch.reading.errors import stat_regular

    if path:
        stat_regular(path)  # a FIFO would block the read: a RunLogError, exit 2
    try:
        return Policy.from_env(base=Policy.from_file(path) if path else None)
    except PolicyError as err:
        raise HealthcheckUsageError(str(err)) from None


def _keys(loss_key, val_loss_key, lr_key, step_key) -> KeyMap:
    return KeyMap(loss=loss_key, val_loss=val_loss_key, lr=lr_key, step=step_key)


# ------------------------------------------------------------------------ commands
# One function per command; the work is imported inside it, so `healthcheck --help` and
# the other commands never pay for matplotlib or the detectors.
@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--once/--follow", "once", default=True, show_default=True,
              help="Judge what is there and exit, or keep following the run until it ends "
                   "(its monitor's closing summary), goes quiet for --timeout, or Ctrl-C.")
@click.option("--fail-on", type=click.Choice(SEVERITY_CHOICES), default="error", show_default=True,
              help="Exit 1 when an event of this severity or worse was found.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON verdict {run_dir, healthy, worst_severity, fail_on, events, last, reader}.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              metavar="S", help="Seconds between polls of the run's files in --follow.")
@click.option("--timeout", type=click.FloatRange(min=0.0), default=None, metavar="S",
              help="In --follow: give up if RUN_DIR has not appeared after S seconds, and "
                   "stop once no new line arrived for S seconds (default: wait forever).")
@_key_options
@_policy_option
@pass_cli
@_usage_errors
def watch(obj: CliContext, run_dir: str, once: bool, fail_on: str, as_json: bool,
          interval: float, timeout: float | None, fmt: str, loss_key, val_loss_key, lr_key,
          step_key, policy_file: str | None) -> None:
    """Judge a run from its files: re-run the stream detectors on its metrics, merge
    health.jsonl, and show the verdict (live while it trains with --follow).

    Exit status: 0 healthy, 1 an event at or above --fail-on, 2 a usage error, 3 an
    internal error.
    """
    from .events import Severity
    from .watch.app import WatchOptions, run_watch

    opts = WatchOptions(follow=not once, fail_on=Severity.parse(fail_on), as_json=as_json,
                        interval=interval, timeout=timeout, fmt=fmt,
                        keys=_keys(loss_key, val_loss_key, lr_key, step_key),
                        policy=_policy(policy_file), color=obj.color)
    code = run_watch(run_dir, opts, out=sys.stdout, err=sys.stderr)
    raise SystemExit(code)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=str), default=None,
              metavar="FILE.html", help="Where to write the report [default: RUN_DIR/report.html].")
@click.option("--png-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              metavar="DIR", help="Where to write the figures as PNG [default: RUN_DIR/report/].")
@_key_options
@_policy_option
@_usage_errors
def report(run_dir: str, out: str | None, png_dir: str | None, fmt: str, loss_key, val_loss_key,
           lr_key, step_key, policy_file: str | None) -> None:
    """Write a self-contained HTML report of a run: loss and terms, weighted term shares,
    gradient norms per module, update ratios, learning rates, health events, the loss
    weights with their sources, and the gate verdict."""
    from .report.page import write_report

    out = out or os.path.join(run_dir, "report.html")
    path = write_report(run_dir, out, png_dir=png_dir, fmt=fmt,
                        keys=_keys(loss_key, val_loss_key, lr_key, step_key),
                        policy=_policy(policy_file))
    click.echo(path)


@cli.command()
@click.option("--preset", default=None, metavar="NAME",
              help="ris_model preset (tiny, small, paper) [default: the config file's, else small].")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=str),
              default=None, metavar="FILE", help="A .toml, .yaml or .json config (applied over the preset).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config value, e.g. --set train.lr=3e-4 (repeatable).")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Where gate.json is written (the run dir training will use).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the gate.json verdict instead of a table.")
@pass_cli
@_usage_errors
def gate(obj: CliContext, preset: str | None, config_file: str | None, overrides: tuple[str, ...],
         run_dir: str, device: str, as_json: bool) -> None:
    """Preflight gate for a ris_model config: checks that it can learn at all (config, loss
    self-test, loss weights, loss at init, gradient reach per parameter and per term,
    optimizer coverage, LR at step 0, a micro-overfit, W&B offline) and writes
    RUN_DIR/gate.json.

    Exit status: 0 passed, 1 a check failed, 2 a usage error.
    """
    import json

    from .gate import progress_line, render_table
    from .ris.gate_subject import GateUsageError, cli_overrides, run_ris_gate

    try:
        values = cli_overrides(overrides, preset)
        click.echo(f"gate: {preset or 'default preset'}{' + ' + config_file if config_file else ''} "
                   f"on {device}", err=True)
        verdict = run_ris_gate(preset=preset, config_file=config_file, overrides=values, run_dir=run_dir,
                               device=device, on_check=lambda c: click.echo(progress_line(c), err=True))
    except GateUsageError as err:
        raise HealthcheckUsageError(str(err)) from None
    if as_json:
        click.echo(json.dumps(verdict.to_dict(), indent=2))
    else:
        from rich.console import Console

        Console(file=sys.stdout, force_terminal=True if obj.color else None,
                no_color=obj.color is False).print(render_table(verdict))
    raise SystemExit(0 if verdict.passed else 1)


# ---------------------------------------------------------------------- entry point
def main() -> None:
    """Entry point of the `healthcheck` script and of `python -m healthcheck`."""
    cli(prog_name="healthcheck")


def _register_weights() -> None:
    from .weights_view import weights_command

    weights_command.callback = _usage_errors(weights_command.callback)
    cli.add_command(weights_command)


_register_weights()

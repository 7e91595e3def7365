"""``ris-model train`` end to end: config, W&B, plugins, progress, fit, closing eval.

Exit status: 0 when every epoch ran, 1 when a callback (the health monitor) stopped the
run, 130 when it was interrupted (SIGINT or SIGTERM). Either way the run directory holds a
checkpoint and a final ``kind: "stop"`` line saying why. A run dir that stops taking
writes (a full disk) ends the run with one sentence and exit status 2, its stop line
written if the disk still takes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.console import Console

from ris_model.config import Config, ConfigError, load_config, parse_set_args
from ris_model.training.rundir import prepare_run_dir, read_run_config

EXIT_OK, EXIT_STOPPED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def resolve_run_config(run_dir: Path, *, resume: bool, preset: str | None, config_file: str | None,
                       overrides: list[str]) -> Config:
    """A fresh run resolves preset < file < --set; a resumed one starts from its config.json."""
    if not resume:
        if (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size > 0:
            raise ConfigError(f"run dir {str(run_dir)!r} already holds a run; pass --resume to continue it "
                              f"or choose a new --run-dir")
        return load_config(preset, config_file, overrides)
    saved = run_dir / "config.json"
    if not (run_dir / "checkpoints" / "last.pt").is_file() or not saved.is_file():
        raise ConfigError(f"nothing to resume in {str(run_dir)!r}: it has no config.json and checkpoints/last.pt")
    if preset or config_file:
        raise ConfigError("--resume continues the run's own config; drop --preset/--config (use --set to extend it)")
    cfg = read_run_config(saved)
    return cfg.with_values(parse_set_args(overrides), "cli") if overrides else cfg


def train_command(*, preset: str | None, config_file: str | None, overrides: list[str], run_dir: Path,
                  device: str, resume: bool, wandb_mode: str | None, health: bool,
                  health_policy: str | None, eval_n: int, console: Console | None = None,
                  health_silence: list[str] | None = None, health_regrade: dict[str, str] | None = None) -> int:
    from ris_model.training.distributed import DistContext
    from ris_model.training.plugins import plugin_callbacks
    from ris_model.training.progress import ProgressCallback
    from ris_model.training.train import Trainer
    from ris_model.training.wandb_logger import WandbLogger, resolve_mode

    console = console or Console(stderr=True)
    cfg = resolve_run_config(run_dir, resume=resume, preset=preset, config_file=config_file, overrides=overrides)
    dist = DistContext.from_env(device)
    if dist.is_main:
        prepare_run_dir(run_dir)  # an unwritable or planted run dir fails before any work
    try:
        mode = resolve_mode(wandb_mode)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if mode == "offline":
        os.environ.setdefault("WANDB_MODE", "offline")
    wandb = WandbLogger(run_dir, cfg.to_json(), mode=mode if dist.is_main else "off",
                        warn=lambda m: console.print(f"[yellow]warning:[/] {m}"))
    options: dict[str, Any] = {"run_dir": run_dir, "policy_file": health_policy, "wandb": wandb,
                               "context": "train", "rank": dist.rank, "console": console,
                               "silence": health_silence or [], "regrade": health_regrade or {}}
    try:
        callbacks = plugin_callbacks(options, disabled=set() if health else {"health"})
    except ValueError as exc:  # a policy naming an unknown code or severity: the plugin says which
        raise ConfigError(str(exc)) from None
    callbacks.insert(0, wandb)  # first: W&B gets each line before any other callback acts on it
    if dist.is_main:
        callbacks.append(ProgressCallback(console=console))
    trainer = Trainer(cfg, run_dir, device=device, callbacks=callbacks, dist=dist,
                      log=lambda m: console.print(m, highlight=False) if dist.is_main else None)
    if resume:
        trainer.resume_from(run_dir / "checkpoints" / "last.pt")
        console.print(f"resumed at epoch {trainer.state.epoch}, step {trainer.state.batches_seen}")
    if dist.is_main:
        console.print(f"run dir: {run_dir}  preset: {cfg.system.preset}  config {cfg.hash}  device: {trainer.device}"
                      f"  W&B: {mode if wandb.active or mode == 'off' else 'off (failed to start)'}", highlight=False)
    try:
        result = trainer.fit()
    except OSError:  # the run dir stopped taking writes: the CLI says so in one sentence
        wandb.finish(exit_code=EXIT_USAGE)
        dist.close()
        raise
    code = EXIT_OK
    if result.interrupted:
        console.print(f"[yellow]interrupted[/]: checkpoint saved to {run_dir / 'checkpoints' / 'last.pt'}; "
                      f"continue with --resume")
        code = EXIT_INTERRUPTED
    elif result.stop_reason is not None:
        console.print(f"[red]stopped[/] ({result.stop_reason.value}): {result.stop_message}")
        code = EXIT_STOPPED
    wandb.finish(exit_code=code)
    if code == EXIT_OK and eval_n > 0 and dist.is_main:
        from ris_model.baseline import render_baseline, table_console
        from ris_model.evaluation.evaluate import evaluate_run

        snr = 10.0
        console.print(f"eval on {eval_n} held-out scenes at {snr:g} dB:")
        table = evaluate_run(run_dir, n=eval_n, snr_db=snr, seed=cfg.train.seed + 99_991, device=str(trainer.device))
        table_console(min_width=130).print(render_baseline(table))
    dist.close()
    return code

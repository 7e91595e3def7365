"""The gate for ``ris_model``: a preflight subject built from a Config, plus its own checks.

The subject wraps the real ``Trainer`` (built in a scratch directory, on one batch of
simulated scenes), so what the gate judges is what training would run: the loss weights
after the Trainer applied its weight plan, the optimizer it built, the LR its scheduler
gives at step 0. Two checks are ``ris_model``-specific: the config resolves and
validates, and the W&B logger works offline.

Expected loss at initialisation (``term_ranges``), from the definitions in
``ris_model/loss.py``, with N RIS elements:

* ``cov`` = ‖R̂ − R‖²_F / ‖R‖²_F with R̂ and R PSD and both of trace N. Expanding,
  cov = 1 + (‖R̂‖² − 2 tr(R̂R)) / ‖R‖² ≤ 1 + ‖R̂‖² / ‖R‖² ≤ 1 + N²/N = 1 + N
  (tr(R̂R) ≥ 0 for PSD pairs, ‖R̂‖² ≤ tr(R̂)² = N², ‖R‖² ≥ tr(R)²/N = N). Above 1 + N the
  matrices are not on the same scale (docs/failure-catalogue.md row 6). An untrained network's R̂ is
  unrelated to R, so cov is O(1) (about 1.6 measured on tiny and small); below 0.1 it
  would already be within ~30 % of every target, which an untrained model is not.
* ``subspace``, ``peak``, ``ortho`` are shares in [0, 1] by construction.

The total is then at most Σ weight × upper bound; the generic check adds "finite, not 0,
not above 1e3".

``gate_entry`` is what ``ris_model``'s HPO calls (entry-point group ``ris_model.gates``,
name ``health``): ``gate_entry(cfg, run_dir, device) -> dict`` (the gate.json content).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ris_model.batches import TrainingScenes, build_scenes
from ris_model.config import PRESETS, Config, ConfigError, LossWeights, load_config, parse_set_args, validate
from ris_model.loss import self_test
from ris_model.training.train import Trainer, resolve_device
from ris_model.training.weights import WeightPlan

from ..gate import GateVerdict, run_gate
from ..preflight import Check, LossParts
from ..safe_files import RunFileError, writable_dir

CONFIG_HINT = ("fix the value the message names; `ris-model config --keys` lists every key with its "
               "type and meaning")
COV_AT_INIT_LOW = 0.1  # see the module docstring
SCENE_SEED_OFFSET = 7_777  # the gate's batch is not one of the training scenes


class GateUsageError(ValueError):
    """The command line itself is wrong (not the config it names): exit 2, not a failed gate."""


# ------------------------------------------------------------------------- config
def cli_overrides(items: Sequence[str], preset: str | None = None) -> dict[str, str]:
    """``--set`` items as a dict; an unknown preset, a malformed item or an unknown key is a
    usage error.

    A value that is out of range, or a combination that cannot train, is not a usage
    error: the gate's ``config`` check reports it (exit 1) with the same message.
    """
    if preset is not None and preset not in PRESETS:
        raise GateUsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        values = parse_set_args(list(items))
        for key in values:
            Config().source_of(key)  # raises with the closest valid key
    except ConfigError as err:
        raise GateUsageError(str(err)) from None
    return values


def check_config(cfg: Config) -> Check:
    """Re-validates a Config however it was built (``dataclasses.replace`` skips validation)."""
    start = time.perf_counter()
    try:
        cfg.with_values({}, "gate")  # re-types and range-checks every value
        validate(cfg)
        WeightPlan(cfg)  # the primary weight stays > 0 in every schedule phase
    except ConfigError as err:
        return Check("config", "failed", {"preset": cfg.system.preset}, str(err), CONFIG_HINT,
                     time.perf_counter() - start)
    weights = cfg.loss.weights.as_dict()
    measured: dict[str, Any] = {"preset": cfg.system.preset, "config_hash": cfg.hash,
                                "weight_phases": 1 + len(cfg.loss.schedule)}
    for term, value in weights.items():
        measured[f"w_{term}"] = value
    sources = {t: cfg.source_of(f"loss.weights.{t}") for t in weights}
    return Check("config", "passed", measured,
                 "valid; loss weights from " + ", ".join(f"{t}={s}" for t, s in sources.items()), "",
                 time.perf_counter() - start)


def load_checked_config(preset: str | None = None, config_file: str | Path | None = None,
                        overrides: Any = ()) -> tuple[Check, Config | None]:
    """Resolve preset < file < overrides; a config that does not resolve is a failed check."""
    start = time.perf_counter()
    try:
        cfg = load_config(preset, config_file, overrides)
    except ConfigError as err:
        return Check("config", "failed", {"preset": preset or ""}, str(err), CONFIG_HINT,
                     time.perf_counter() - start), None
    check = check_config(cfg)
    return dataclasses.replace(check, seconds=time.perf_counter() - start), (cfg if check.passed else None)


# ------------------------------------------------------------------------ subject
def init_ranges(n_elements: int) -> dict[str, tuple[float, float]]:
    """Each HybridLoss term's range for an untrained model (derived in the module docstring)."""
    return {"cov": (COV_AT_INIT_LOW, 1.0 + n_elements), "subspace": (0.0, 1.0), "peak": (0.0, 1.0),
            "ortho": (0.0, 1.0)}


def _split_of_size(batch: TrainingScenes, n: int) -> TrainingScenes:
    """A split of ``n`` scenes that all alias the batch's first scene (a view, no copy).

    The Trainer derives its steps per epoch, and so its LR schedule, from the training
    split's length; simulating the full split would cost the gate seconds for nothing.
    """
    return TrainingScenes(**{f.name: getattr(batch, f.name)[:1].expand(n, *getattr(batch, f.name).shape[1:])
                             for f in dataclasses.fields(TrainingScenes)})


class RisGateSubject:
    """The preflight subject of a ris_model Config: the real Trainer and one batch.

    Attributes are read from the trainer on every access, so a test may swap a part of
    the trainer (its loss weights, its scheduler) after the subject is built.
    """

    def __init__(self, trainer: Trainer, batch: TrainingScenes, workdir: Any = None) -> None:
        self.trainer = trainer
        self._batch = batch.to(trainer.device)
        self._workdir = workdir
        self.term_ranges = init_ranges(trainer.cfg.system.n_elements)
        # Every term is a function of the factor F, the output of the whole network.
        self.term_reaches = {t: ("",) for t in LossWeights.terms()}

    # -- what the checks read ---------------------------------------------------------
    @property
    def cfg(self) -> Config:
        return self.trainer.cfg

    @property
    def model(self):
        return self.trainer.model

    @property
    def optimizer(self):
        return self.trainer.optimizer

    @property
    def scheduler(self):
        return self.trainer.scheduler

    @property
    def primary(self) -> str:
        return self.trainer.loss_fn.primary

    @property
    def allow_zero_primary(self) -> bool:
        return self.cfg.loss.ablation_zero_primary

    @property
    def grad_clip(self) -> float:
        return self.cfg.train.grad_clip

    def batch(self) -> TrainingScenes:
        return self._batch

    def loss(self, batch: TrainingScenes) -> LossParts:
        """The Trainer's forward: autocast as configured, then the live loss function."""
        t = self.trainer
        autocast = (torch.autocast(t.device.type, dtype=t.amp_dtype) if t.amp_dtype
                    else contextlib.nullcontext())
        with autocast:
            pred = t.model(batch.rbp, batch.snr_db, batch.snapshots)
        out = t.loss_fn(pred, batch.R, batch.phi, batch.theta, batch.r, batch.mask)
        return LossParts(out.total, out.terms, out.weights)

    def self_test(self) -> dict[str, float]:
        b = self._batch
        return self_test(self.trainer.loss_fn, b.R, b.phi, b.theta, b.r, b.mask, self.cfg.system.k_max)

    def close(self) -> None:
        self.trainer.run.close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def build_subject(cfg: Config, *, device: str = "auto") -> RisGateSubject:
    """The Trainer of ``cfg`` in a scratch directory, and one batch of ``batch_size`` scenes."""
    tc = cfg.train
    batch = build_scenes(cfg.system, tc.batch_size, seed=tc.seed + SCENE_SEED_OFFSET)
    workdir = tempfile.TemporaryDirectory(prefix="healthcheck-gate-")
    try:
        trainer = Trainer(cfg, workdir.name, device=device, train_scenes=_split_of_size(batch, tc.train_scenes),
                          val_scenes=batch)
    except BaseException:
        workdir.cleanup()
        raise
    return RisGateSubject(trainer, batch, workdir)


# -------------------------------------------------------------------------- W&B
def check_wandb(cfg: Config) -> Check:
    """The W&B logger starts, logs one value and finishes in offline mode, in a temp dir."""
    from ris_model.training.wandb_logger import WandbLogger, resolve_mode

    start = time.perf_counter()
    name = "wandb_offline"
    try:
        mode = resolve_mode(None)
    except ValueError as err:
        return Check(name, "failed", {}, str(err), "set RIS_MODEL_WANDB / WANDB_MODE to off, offline or online",
                     time.perf_counter() - start)
    if mode == "off":
        return Check(name, "skipped", {"mode": mode}, "W&B is off (RIS_MODEL_WANDB / WANDB_MODE)", "",
                     time.perf_counter() - start)
    running = getattr(sys.modules.get("wandb"), "run", None)
    if running is not None:
        return Check(name, "skipped", {"mode": mode},
                     "a W&B run is already active in this process; starting a probe run would finish it", "",
                     time.perf_counter() - start)
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="healthcheck-wandb-") as tmp:
        logger = WandbLogger(tmp, cfg.to_json(), mode="offline", name="healthcheck-gate-probe",
                             warn=warnings.append)
        started = logger.active
        logger.log({"gate/probe": 1.0}, step=0)
        logger.finish()
        files = sum(len(fs) for _, _, fs in os.walk(Path(tmp) / "wandb"))
    measured = {"mode": mode, "started": started, "files": files}
    problems = list(warnings)
    if not started and not warnings:
        problems.append("the logger did not start")
    if started and files == 0:
        problems.append("the offline run wrote no files")
    if problems:
        return Check(name, "failed", measured, "; ".join(problems),
                     "training would run without W&B logs; run `wandb offline` in a shell to see the "
                     "error, or switch W&B off with RIS_MODEL_WANDB=off", time.perf_counter() - start)
    return Check(name, "passed", measured, f"offline run started, logged and finished ({files} files)", "",
                 time.perf_counter() - start)


# ------------------------------------------------------------------------ the gate
def run_ris_gate(cfg: Config | None = None, *, preset: str | None = None,
                 config_file: str | Path | None = None, overrides: Any = (),
                 run_dir: str | os.PathLike | None = None, device: str = "auto",
                 on_check: Callable[[Check], None] | None = None, wandb: bool = True,
                 checks: Iterable[Callable[[Any], Check]] | None = None,
                 subject_hook: Callable[[RisGateSubject], None] | None = None) -> GateVerdict:
    """The gate of a ris_model config: config check, preflight checks, W&B check.

    Pass ``cfg`` (already resolved, e.g. by the HPO) or ``preset`` / ``config_file`` /
    ``overrides`` (resolved here; a config that does not resolve fails the ``config``
    check). An unusable ``device`` raises GateUsageError before anything runs.
    ``subject_hook`` may alter the subject before the checks run (fault injection).
    """
    try:
        resolve_device(device)
        if run_dir is not None:
            writable_dir(run_dir)  # before the checks, not after them
    except (ConfigError, RunFileError) as err:
        raise GateUsageError(str(err)) from None
    if cfg is None:
        config_check, cfg_ok = load_checked_config(preset, config_file, overrides)
    else:
        config_check = check_config(cfg)
        cfg_ok = cfg if config_check.passed else None
    config_hash = cfg.hash if cfg is not None else None
    if cfg_ok is None:
        return run_gate(None, prior=[config_check], run_dir=run_dir, config_hash=config_hash,
                        on_check=on_check, subject_name="ris_model")
    # The Trainer seeds torch's global generator; the caller's (an HPO study's) must not change.
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        start = time.perf_counter()
        try:
            subject = build_subject(cfg_ok, device=device)
        except Exception as err:
            built = Check("build", "failed", {}, f"the Trainer could not be built: {type(err).__name__}: {err}",
                          "build it by hand with the same config to see the full error",
                          time.perf_counter() - start)
            return run_gate(None, prior=[config_check, built], run_dir=run_dir, config_hash=cfg_ok.hash,
                            on_check=on_check, subject_name=f"ris_model:{cfg_ok.system.preset}")
        try:
            if subject_hook is not None:
                subject_hook(subject)
            extra = [lambda: check_wandb(cfg_ok)] if wandb else []
            return run_gate(subject, checks=checks, prior=[config_check], extra=extra, run_dir=run_dir,
                            config_hash=cfg_ok.hash, on_check=on_check,
                            subject_name=f"ris_model:{cfg_ok.system.preset}")
        finally:
            subject.close()


def gate_entry(cfg: Config, run_dir: str | os.PathLike | None, device: str = "auto") -> dict[str, Any]:
    """Entry point ``ris_model.gates:health``: the gate.json verdict of ``cfg`` as a dict.

    The HPO refuses to start unless ``result["passed"]``; ``result["checks"]`` says why.
    """
    return run_ris_gate(cfg, run_dir=run_dir, device=device).to_dict()


__all__ = ["GateUsageError", "RisGateSubject", "build_subject", "check_config", "check_wandb", "cli_overrides",
           "gate_entry", "init_ranges", "load_checked_config", "run_ris_gate"]

"""``ris-model eval``: the network's own estimate, the snapshot fit, the baselines and the CRB.

Each row says what it measures:

- ``learned``: MUSIC on the network's R̂, the network's own estimate;
- ``learned_fit``: the snapshot fit (a maximum-likelihood fit of the sources to the
  snapshots, ``eval.refine = "ml"``) started from ``learned``;
- ``ls_fit``: the same fit started from ``music_ls``, so that what the network adds to
  the fit is the gap between ``learned_fit`` and ``ls_fit``;
- ``music_ls``, ``music_bp``, ``music_ml``, ``mvdr_ls``, ``music_true``: the classical rows;
  ``music_ml`` is MUSIC on R_bp after the fixed likelihood steps that a network with
  ``model.unroll_steps`` unrolls with learned sizes, so what learning adds to those steps
  is the gap between ``learned`` and ``music_ml``.

Every row is evaluated on exactly the same scenes: the same seed gives the same scenes
(``simulate`` is deterministic per seed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ris_model.baseline import (
    Count,
    baseline_estimates,
    baseline_report,
    check_count,
    clock_for,
    localize_rule,
    oracle_or_none,
    synchronize,
)
from ris_model.batches import TrainingScenes
from ris_model.config import EVALUATION_KEYS, Config, ConfigError, apply_overrides
from ris_model.estimators.search import Estimates, localize
from ris_model.estimators.snapshot_fit.fit import fit_and_localize
from ris_model.evaluation.bootstrap import SceneTotals, paired_lead
from ris_model.evaluation.metrics import match_sources
from ris_model.model import CovarianceNet
from ris_model.physics import simulate
from ris_model.training.rundir import load_checkpoint, load_weights, read_run_config
from ris_model.training.train import resolve_device

_CHUNK = 100
LEARNED, LEARNED_FIT, LS_FIT = "learned", "learned_fit", "ls_fit"
# (row, reference): the leads an evaluation reports. The network against the classical
# estimates it must beat on its own, and the fit from the network against the same fit
# from the classical start.
LEAD_PAIRS = ((LEARNED, "music_ls"), (LEARNED, "music_bp"), (LEARNED, "music_ml"), (LEARNED_FIT, LS_FIT))
# The order of the table: the network's rows first, each fit next to its start.
ROW_ORDER = (LEARNED, LEARNED_FIT, "music_ls", LS_FIT, "music_bp", "music_ml", "mvdr_ls", "music_true")


def load_run_config(run_dir: Path, checkpoint: str = "best") -> Config:
    """The config of a finished run, once its ``checkpoints/{best,last}.pt`` is known to exist."""
    cfg_path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise ConfigError(
            f"run dir {str(run_dir)!r} does not exist; pass the --run-dir of a finished `ris-model train`"
        )
    if not cfg_path.is_file() or not (run_dir / "checkpoints" / f"{checkpoint}.pt").is_file():
        raise ConfigError(
            f"{str(run_dir)!r} has no config.json or checkpoints/{checkpoint}.pt; is it a ris-model run directory?"
        )
    return read_run_config(cfg_path)


def load_trained(run_dir: Path, checkpoint: str = "best", device: str = "cpu") -> tuple[Config, CovarianceNet]:
    """The run's config and model from ``checkpoints/{best,last}.pt`` (weights only)."""
    cfg = load_run_config(run_dir, checkpoint)
    dev = resolve_device(device)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    state = load_checkpoint(path, map_location=dev)
    model = CovarianceNet(cfg.system, cfg.model).to(dev)
    ema = state.get("ema") is not None
    load_weights(model, state["ema"] if ema else state["model"], path, "ema" if ema else "model")
    return cfg, model.eval()


@torch.no_grad()
def learned_covariance(cfg: Config, model: CovarianceNet, scenes, device: torch.device) -> torch.Tensor:
    """R̂ + εI (complex128, on ``device``), with ε = model.eps: the loading the network was built with."""
    eye = torch.eye(cfg.system.n_elements, dtype=torch.complex128, device=device)
    feats = TrainingScenes.from_scenes(cfg.system, scenes).to(device)
    return model(feats.rbp, feats.snr_db, feats.snapshots).covariance.to(torch.complex128) + cfg.model.eps * eye


def _chunks(scenes, device: torch.device):
    for lo in range(0, len(scenes), _CHUNK):
        yield scenes.index(slice(lo, lo + _CHUNK)).to(device)


def learned_estimates(cfg: Config, model: CovarianceNet, scenes, device: torch.device,
                      count: Count = "oracle") -> Estimates:
    """MUSIC on the learned covariance alone: the network's own estimate, with the oracle K
    or K estimated on R̂ by the run's ``eval.count_rule``."""
    parts = [
        localize(learned_covariance(cfg, model, part, device), cfg.system, oracle_or_none(count, part.k),
                 method="music", **localize_rule(cfg))
        for part in _chunks(scenes, device)
    ]
    return Estimates.cat(parts)


def with_eval_settings(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """The run's config with evaluation-time ``overrides`` (dotted keys of ``EVALUATION_KEYS``) applied.

    Those keys say how MUSIC's sources are refined; every other key describes the trained
    network and the scenes it was trained for. Only these keys are checked: the rest of
    the run's config is what it was trained with, and an evaluation is no place to find
    fault with it.
    """
    for key in overrides:
        cfg.source_of(key)  # an unknown key fails here, with the nearest known one
    fixed = sorted(set(overrides) - set(EVALUATION_KEYS))
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)} cannot change at evaluation (the run was trained with it); "
            f"only {', '.join(EVALUATION_KEYS)} can"
        )
    return apply_overrides(cfg, overrides, "eval", check=False) if overrides else cfg


def evaluate_run(
    run_dir: Path,
    *,
    n: int,
    snr_db: float,
    k: int | None = None,
    count: Count = "oracle",
    seed: int = 12345,
    checkpoint: str = "best",
    device: str = "cpu",
    refine: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    lead_resamples: int = 0,
) -> dict[str, Any]:
    """The ``ris-model baseline`` JSON for these scenes, plus the learned rows.

    ``"learned"`` is MUSIC on the learned covariance R̂. When the run's ``eval.refine``
    (or ``refine``) is "ml", ``"learned_fit"`` is the snapshot fit started from it and
    ``"ls_fit"`` the same fit started from ``"music_ls"``. ``k`` fixes the sources per
    scene (None: drawn per scene); ``count`` says whether every row is told the true K
    ("oracle") or estimates it ("auto": ``eval.count_rule`` on the row's covariance; a fit
    keeps the count of its start). ``overrides`` change the run's evaluation-time settings
    (:data:`EVALUATION_KEYS`), e.g. ``{"eval.refine_steps": 300}``. ``"scenes_per_s"``
    holds each row's throughput from the snapshots on, measured in this call (a fit's
    includes its start), per CPU second on a CPU (``"clock": "cpu"``), else per second of
    wall time (``"wall"``). With ``lead_resamples``, ``"lead"`` holds the leads of
    :data:`LEAD_PAIRS` with 95% paired-bootstrap intervals (:func:`paired_lead`).
    """
    if refine not in (None, "ml", "none"):
        raise ConfigError(f"refine must be 'ml' or 'none' but got {refine!r}")
    try:
        check_count(count)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    overrides = dict(overrides or {})
    if refine is not None:
        if str(overrides.setdefault("eval.refine", refine)) != refine:
            raise ConfigError(f"refine={refine!r} contradicts eval.refine={overrides['eval.refine']!r}; give one")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of scenes must be a positive int but got {n=}")
    cfg, model = load_trained(Path(run_dir), checkpoint, device)
    cfg = with_eval_settings(cfg, overrides)
    if k is not None and not 1 <= k <= cfg.system.k_max:
        raise ConfigError(f"k={k} sources per scene is outside 1..{cfg.system.k_max}, this run's system.k_max")
    refine = cfg.eval.refine
    dev = next(model.parameters()).device
    scenes = simulate(cfg.system, n, seed=seed, snr_db=float(snr_db), k=k)
    seconds: dict[str, float] = {}
    clock_name, clock = clock_for(scenes.y.device, dev)
    estimates = baseline_estimates(cfg.system, scenes, count=count, rule=localize_rule(cfg), seconds=seconds,
                                   clock=clock)

    def timed(name: str, make: Callable[[], Estimates]) -> Estimates:
        t0 = clock()
        out = make()
        synchronize(dev)
        seconds[name] = clock() - t0
        return out

    estimates[LEARNED] = timed(LEARNED, lambda: learned_estimates(cfg, model, scenes, dev, count))
    if refine == "ml":
        for row, start in ((LEARNED_FIT, LEARNED), (LS_FIT, "music_ls")):
            estimates[row] = timed(row, partial(_refined, cfg, estimates[start], scenes, dev))
            seconds[row] += seconds[start]
    estimates = {name: estimates[name] for name in (*ROW_ORDER, *estimates) if name in estimates}
    result = baseline_report(cfg.system, scenes, estimates, snr_db=snr_db, count=count, rule=localize_rule(cfg),
                             seconds=seconds, clock=clock_name)
    if lead_resamples:
        result["lead"] = _leads(estimates, scenes, lead_resamples)
    result["refine"] = refine
    result["refine_settings"] = {key: cfg.get(key) for key in EVALUATION_KEYS if ".refine" in key} \
        if refine == "ml" else None
    result["run_dir"] = str(run_dir)
    return result


def _leads(estimates: dict[str, Estimates], scenes, resamples: int) -> dict[str, Any]:
    """The leads of :data:`LEAD_PAIRS` present in ``estimates``, paired over the scenes."""

    def totals(est: Estimates) -> SceneTotals:
        est = est.to("cpu")
        matching = match_sources(est.phi, est.theta, est.r, est.mask, scenes.phi, scenes.theta, scenes.r, scenes.mask)
        return SceneTotals.of(matching, scenes.mask)

    cached: dict[str, SceneTotals] = {}
    pairs = []
    for row, over in LEAD_PAIRS:
        if row in estimates and over in estimates:
            for name in (row, over):
                if name not in cached:
                    cached[name] = totals(estimates[name])
            pairs.append({"row": row, "over": over,
                          **paired_lead(cached[row], cached[over], resamples=resamples)})
    return {"resamples": resamples, "level": 0.95, "pairs": pairs}


def _refined(cfg: Config, coarse: Estimates, scenes, device: torch.device) -> Estimates:
    """The snapshot fit of estimates already made, chunk by chunk, then MUSIC on the fitted covariance."""
    parts = []
    for lo, part in zip(range(0, len(scenes), _CHUNK), _chunks(scenes, device)):
        parts.append(
            fit_and_localize(
                coarse.index(slice(lo, lo + _CHUNK)).to(device),
                part,
                cfg.system,
                steps=cfg.eval.refine_steps,
                radius_deg=cfg.eval.refine_radius_deg,
                moves=cfg.eval.refine_moves,
            )
        )
    return Estimates.cat(parts)

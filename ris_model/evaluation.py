"""``ris-model eval``: MUSIC on the learned covariance, next to the baselines and the CRB.

The learned estimator is evaluated on exactly the scenes the baselines see: the same
seed gives the same scenes (``simulate`` is deterministic per seed), so every row of the
table is measured on one set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ris_model.baseline import run_baseline
from ris_model.batches import TrainingScenes
from ris_model.config import Config, ConfigError
from ris_model.estimators.metrics import evaluate_estimates
from ris_model.estimators.search import Estimates, localize
from ris_model.model import CovarianceNet
from ris_model.physics import simulate
from ris_model.rundir import load_checkpoint
from ris_model.train import resolve_device

_CHUNK = 100


def load_trained(run_dir: Path, checkpoint: str = "best", device: str = "cpu") -> tuple[Config, CovarianceNet]:
    """The run's config and model from ``checkpoints/{best,last}.pt`` (weights only)."""
    cfg_path = run_dir / "config.json"
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not run_dir.is_dir():
        raise ConfigError(f"run dir {str(run_dir)!r} does not exist; pass the --run-dir of a finished `ris-model train`")
    if not cfg_path.is_file() or not ckpt.is_file():
        raise ConfigError(f"{str(run_dir)!r} has no config.json or checkpoints/{checkpoint}.pt; "
                          f"is it a ris-model run directory?")
    cfg = Config.from_json(json.loads(cfg_path.read_text()))
    dev = resolve_device(device)
    state = load_checkpoint(ckpt, map_location=dev)
    model = CovarianceNet(cfg.system, cfg.model).to(dev)
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    return cfg, model.eval()


@torch.no_grad()
def learned_estimates(cfg: Config, model: CovarianceNet, scenes, device: torch.device) -> Estimates:
    """MUSIC (oracle K) on R̂ + εI, with ε = model.eps: the loading the network was built with."""
    parts = []
    eye = torch.eye(cfg.system.n_elements, dtype=torch.complex128, device=device)
    for lo in range(0, len(scenes), _CHUNK):
        part = scenes.index(slice(lo, lo + _CHUNK))
        feats = TrainingScenes.from_scenes(cfg.system, part).to(device)
        R_hat = model(feats.rbp, feats.snr_db).covariance.to(torch.complex128) + cfg.model.eps * eye
        parts.append(localize(R_hat, cfg.system, part.k.to(device), method="music"))
    return Estimates.cat(parts)


def evaluate_run(run_dir: Path, *, n: int, snr_db: float, k: int | None = None, seed: int = 12345,
                 checkpoint: str = "best", device: str = "cpu") -> dict[str, Any]:
    """The ``ris-model baseline`` JSON for these scenes, plus ``"music_learned"``."""
    cfg, model = load_trained(Path(run_dir), checkpoint, device)
    dev = next(model.parameters()).device
    result = run_baseline(cfg, snr_db=snr_db, n=n, k=k, seed=seed)
    scenes = simulate(cfg.system, n, seed=seed, snr_db=float(snr_db), k=k)
    est = learned_estimates(cfg, model, scenes, dev)
    m = evaluate_estimates(est, scenes.phi.to(dev), scenes.theta.to(dev), scenes.r.to(dev), scenes.mask.to(dev))
    result["estimators"]["music_learned"] = {
        "rmse_phi_deg": m["rmse_phi_deg"], "rmse_theta_deg": m["rmse_theta_deg"],
        "rmse_r_m": m["rmse_r_m"] if cfg.system.near_field else None, "within_1deg": m["within_1deg"]}
    result["run_dir"] = str(run_dir)
    return result

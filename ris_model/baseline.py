"""The classical baselines next to the physical limit, on freshly simulated scenes.

Every learned result is reported against three references (docs/physics.md, Metrics):
MUSIC on the exact R (the ceiling: what a perfect covariance estimate would give),
MUSIC on R_ls (the classical baseline that learning must beat) and the CRB. R_bp and
MVDR are there to show that the baseline is not a weak choice among the classical ones.
K is the oracle count throughout, so the numbers measure localisation, not detection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ris_model.config import Config, SystemConfig, load_config
from ris_model.estimators.covariance import r_bp, r_ls
from ris_model.estimators.search import Estimates, localize
from ris_model.evaluation.metrics import evaluate_estimates
from ris_model.physics.simulate import SceneBatch, simulate

DEFAULT_ESTIMATORS = ("music_true", "music_ls", "music_bp", "mvdr_ls")
# estimator name = "<spectrum>_<covariance>"
SPECTRA = ("music", "mvdr")
COVARIANCES = ("true", "ls", "bp")
# Scenes localised at once: bounds the grid-stage and CG intermediates.
_CHUNK = 50


def _system_of(cfg_or_system: Config | SystemConfig | str) -> SystemConfig:
    if isinstance(cfg_or_system, str):
        return load_config(cfg_or_system).system
    if isinstance(cfg_or_system, Config):
        return cfg_or_system.system
    if isinstance(cfg_or_system, SystemConfig):
        return cfg_or_system
    raise TypeError(f"expected a Config, a SystemConfig or a preset name but got {type(cfg_or_system).__name__}")


def _parse(name: str) -> tuple[str, str]:
    spectrum, _, cov = name.partition("_")
    if spectrum not in SPECTRA or cov not in COVARIANCES:
        valid = ", ".join(f"{s}_{c}" for s in SPECTRA for c in COVARIANCES)
        raise ValueError(f"unknown baseline estimator {name!r}; choose from {valid}")
    return spectrum, cov


def _covariance(kind: str, batch: SceneBatch, system: SystemConfig) -> torch.Tensor:
    if kind == "true":
        return batch.R
    if kind == "ls":
        cov = r_ls(batch.y, batch.codes, batch.H, batch.noise_var, ridge_scale=system.ls_ridge_scale)
        assert isinstance(cov, torch.Tensor)  # no return_info: the covariance alone
        return cov
    return r_bp(batch.y, batch.codes, batch.H)


def _crb_summary(system: SystemConfig, batch: SceneBatch) -> dict[str, float | None]:
    from ris_model.physics.crb import crb  # imported late: the heaviest physics module

    parts = [crb(system, batch.index(slice(lo, lo + _CHUNK))) for lo in range(0, len(batch), _CHUNK)]
    deg = 180.0 / math.pi

    def pooled(values: list[torch.Tensor], scale: float) -> tuple[float | None, float | None]:
        x = torch.cat([v[p.mask] for v, p in zip(values, parts)]).double().cpu().numpy()
        x = x[np.isfinite(x)]  # a singular FIM (unidentifiable scene) gives inf
        if x.size == 0:
            return None, None
        return float(np.mean(x)) * scale, float(np.median(x)) * scale

    phi_mean, phi_median = pooled([p.phi for p in parts], deg)
    theta_mean, theta_median = pooled([p.theta for p in parts], deg)
    if system.near_field:
        r_mean, r_median = pooled([p.r for p in parts], 1.0)  # type: ignore[misc]
    else:
        r_mean = r_median = None
    return {"phi_deg_mean": phi_mean, "phi_deg_median": phi_median,
            "theta_deg_mean": theta_mean, "theta_deg_median": theta_median,
            "r_m_mean": r_mean, "r_m_median": r_median}


def baseline_estimates(system: SystemConfig, batch: SceneBatch,
                       estimators: Iterable[str] = DEFAULT_ESTIMATORS) -> dict[str, Estimates]:
    """Each named estimator ("<music|mvdr>_<true|ls|bp>") on every scene, oracle K."""
    parsed = {name: _parse(name) for name in estimators}
    needed = {cov for _, cov in parsed.values()}
    estimates: dict[str, list[Estimates]] = {name: [] for name in parsed}
    for lo in range(0, len(batch), _CHUNK):
        part = batch.index(slice(lo, lo + _CHUNK))
        covs = {kind: _covariance(kind, part, system) for kind in COVARIANCES if kind in needed}
        for name, (spectrum, cov) in parsed.items():
            estimates[name].append(localize(covs[cov], system, part.k, method=spectrum))  # type: ignore[arg-type]
    return {name: Estimates.cat(parts) for name, parts in estimates.items()}


def estimator_row(system: SystemConfig, est: Estimates, batch: SceneBatch) -> dict[str, float | None]:
    """One estimator's row of the report: RMSE of φ, θ (degrees) and r (metres, near field), within-1° share."""
    dev = est.phi.device
    m = evaluate_estimates(est, batch.phi.to(dev), batch.theta.to(dev), batch.r.to(dev), batch.mask.to(dev))
    return {"rmse_phi_deg": m["rmse_phi_deg"], "rmse_theta_deg": m["rmse_theta_deg"],
            "rmse_r_m": m["rmse_r_m"] if system.near_field else None, "within_1deg": m["within_1deg"]}


def baseline_report(system: SystemConfig, batch: SceneBatch, estimates: dict[str, Estimates], *, snr_db: float,
                    crb: bool = True) -> dict[str, Any]:
    """The JSON of :func:`run_baseline` for estimates already made on ``batch``."""
    return {"preset": system.preset, "snr_db": float(snr_db), "n": len(batch),
            "estimators": {name: estimator_row(system, est, batch) for name, est in estimates.items()},
            "crb": _crb_summary(system, batch) if crb else None}


def run_baseline(cfg_or_system: Config | SystemConfig | str, snr_db: float, n: int, k: int | None,
                 seed: int, estimators: Iterable[str] = DEFAULT_ESTIMATORS, *, crb: bool = True,
                 device: torch.device | str | None = None) -> dict[str, Any]:
    """Simulate ``n`` scenes at ``snr_db`` (``k`` sources each, or K drawn per scene when
    None) and evaluate each estimator with the oracle K.

    Returns ``{"preset", "snr_db", "n", "estimators": {name: {"rmse_phi_deg",
    "rmse_theta_deg", "rmse_r_m", "within_1deg"}}, "crb": {"phi_deg_mean", ...}}``;
    range entries are None in the far field, and "crb" is None when ``crb=False``.
    Estimator names are "<music|mvdr>_<true|ls|bp>".
    """
    system = _system_of(cfg_or_system)
    estimators = tuple(estimators)
    for name in estimators:
        _parse(name)  # an unknown name fails before any simulation
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of scenes must be a positive int but got {n=}")
    batch = simulate(system, n, seed=seed, snr_db=float(snr_db), k=k, device=device)
    return baseline_report(system, batch, baseline_estimates(system, batch, estimators), snr_db=snr_db, crb=crb)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e4):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def lead_cells(lead: dict[str, dict[str, float]]) -> list[str]:
    """One lead of :func:`~ris_model.evaluation.bootstrap.paired_lead` as table cells:
    RMSE φ and θ in degrees, the within-1° share in points, each "lead [low, high]"."""
    from ris_model.evaluation.bootstrap import LEAD_KEYS

    cells = []
    for key in LEAD_KEYS:
        scale, digits = (100.0, 1) if key == "within_1deg" else (1.0, 2)
        v = {part: scale * lead[key][part] for part in ("lead", "low", "high")}
        cells.append(f"{v['lead']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]")
    return cells


def render_lead(result: dict[str, Any]):
    """A rich Table of an evaluation's ``"lead"``: music_learned's lead over each classical row."""
    from rich.table import Table

    lead = result["lead"]
    table = Table(title=f"music_learned's lead [{100 * lead['level']:g}% interval, {lead['resamples']} paired "
                        f"resamples of the scenes]; positive: music_learned ahead")
    for col in ("over", "RMSE φ (deg)", "RMSE θ (deg)", "within 1° (points)"):
        table.add_column(col, no_wrap=True, justify="left" if col == "over" else "right")
    for name, row in lead["over"].items():
        table.add_row(name, *lead_cells(row))
    return table


def table_console(min_width: int = 100):
    """The console for estimator tables: a terminal's own width, and at least ``min_width``
    columns off a terminal (a pipe, a CI log), where rich would otherwise assume 80 and cut
    the tables' last characters to ellipses."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(min_width, console.width))


def render_baseline(result: dict[str, Any]):
    """A rich Table of a :func:`run_baseline` result: one row per estimator, then the CRB."""
    from rich.table import Table

    title = f"{result['preset']}: {result['n']} scenes at {result['snr_db']:g} dB, oracle K"
    settings = result.get("refine_settings") or {}
    if result.get("refine") == "ml" and settings:
        title += (f"; music_learned = MUSIC on R̂, then the snapshot fit ({settings['eval.refine_steps']} steps, "
                  f"each source within {settings['eval.refine_radius_deg']:g}°, "
                  f"{settings.get('eval.refine_moves', 0)} rounds of global moves)")
    table = Table(title=title)
    for col in ("estimator", "RMSE φ (deg)", "RMSE θ (deg)", "RMSE r (m)", "within 1°"):
        table.add_column(col, justify="left" if col == "estimator" else "right", no_wrap=True,
                         min_width=None if col == "estimator" else 8)  # "8.87e-07" whole, never "8.87…"
    for name, m in result["estimators"].items():
        within = None if m["within_1deg"] is None else 100 * m["within_1deg"]
        table.add_row(name, _fmt(m["rmse_phi_deg"]), _fmt(m["rmse_theta_deg"]), _fmt(m["rmse_r_m"]),
                      "—" if within is None else f"{within:.1f}%")
    c = result.get("crb")
    if c is not None:
        table.add_section()
        table.add_row("√CRB mean", _fmt(c["phi_deg_mean"]), _fmt(c["theta_deg_mean"]), _fmt(c["r_m_mean"]), "")
        table.add_row("√CRB median", _fmt(c["phi_deg_median"]), _fmt(c["theta_deg_median"]),
                      _fmt(c["r_m_median"]), "")
    return table


__all__ = ["COVARIANCES", "DEFAULT_ESTIMATORS", "SPECTRA", "baseline_estimates", "baseline_report", "estimator_row",
           "render_baseline", "run_baseline"]

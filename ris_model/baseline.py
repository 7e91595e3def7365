"""The classical baselines next to the physical limit, on freshly simulated scenes.

Every learned result is reported against three references (docs/physics.md, Metrics):
MUSIC on the exact R (the ceiling: what a perfect covariance estimate would give),
MUSIC on R_ls (the classical baseline that learning must beat) and the CRB. R_bp and
MVDR are there to show that the baseline is not a weak choice among the classical ones.
K is the oracle count by default, so the numbers measure localisation; with
``count="auto"`` each row estimates K itself (MDL on the eigenvalues of the covariance
it localises on), and precision, recall and F1 measure detection too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Literal

import numpy as np
import torch

from ris_model.config import Config, SystemConfig, load_config
from ris_model.estimators.covariance import r_bp, r_ls
from ris_model.estimators.covariance_ml import r_ml
from ris_model.estimators.search import Estimates, localize
from ris_model.evaluation.metrics import evaluate_estimates
from ris_model.physics.simulate import SceneBatch, simulate

DEFAULT_ESTIMATORS = ("music_true", "music_ls", "music_bp", "music_ml", "mvdr_ls")
# estimator name = "<spectrum>_<covariance>"; "ml" is R_bp after fixed likelihood steps
# (ris_model.estimators.covariance_ml): the classical half of a network that unrolls them
SPECTRA = ("music", "mvdr")
COVARIANCES = ("true", "ls", "bp", "ml")
# How the estimators learn K: "oracle" (the true count) or "auto" (estimated from the data).
COUNTS = ("oracle", "auto")
Count = Literal["oracle", "auto"]
# Scenes localised at once: bounds the grid-stage and CG intermediates.
_CHUNK = 50


def check_count(count: str) -> None:
    """Refuse a source-count mode other than those of :data:`COUNTS`."""
    if count not in COUNTS:
        raise ValueError(f"the source count must be 'oracle' or 'auto' but got {count!r}")


def localize_rule(cfg: Config) -> dict[str, Any]:
    """How every row localises, as :func:`~ris_model.estimators.search.localize`'s keywords:
    how it estimates K (``--k auto``: ``eval.count_rule``, ``eval.count_threshold``) and how
    MUSIC places the K sources (``eval.music_fit``)."""
    return {"order": cfg.eval.count_rule, "threshold": cfg.eval.count_threshold, "music_fit": cfg.eval.music_fit}


def describe_rule(rule: dict[str, Any]) -> str:
    """"MDL" or "eigenvalues above 0.5 x the largest": the count rule in a table's title."""
    return "MDL" if rule["order"] == "mdl" else f"eigenvalues above {rule['threshold']:g} × the largest"


def oracle_or_none(count: str, k: torch.Tensor) -> torch.Tensor | None:
    """What :func:`~ris_model.estimators.search.localize` takes as K: the true counts, or
    None to estimate them (MDL on the covariance being localised)."""
    check_count(count)
    return k if count == "oracle" else None


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a wall-clock timing covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def clock_for(*devices: torch.device | str) -> tuple[str, Callable[[], float]]:
    """The clock that times estimators on ``devices``: ("cpu", process time) when all are
    CPUs, so that a busy, shared machine does not slow the count down (other processes
    take wall time, not this one's CPU time), else ("wall", wall-clock time)."""
    if all(torch.device(d).type == "cpu" for d in devices):
        return "cpu", time.process_time
    return "wall", time.perf_counter


def _config_of(cfg_or_system: Config | SystemConfig | str) -> Config:
    if isinstance(cfg_or_system, str):
        return load_config(cfg_or_system)
    if isinstance(cfg_or_system, Config):
        return cfg_or_system
    if isinstance(cfg_or_system, SystemConfig):
        return Config(system=cfg_or_system)
    raise TypeError(f"expected a Config, a SystemConfig or a preset name but got {type(cfg_or_system).__name__}")


def _parse(name: str) -> tuple[str, str]:
    spectrum, _, cov = name.partition("_")
    if spectrum not in SPECTRA or cov not in COVARIANCES:
        valid = ", ".join(f"{s}_{c}" for s in SPECTRA for c in COVARIANCES)
        raise ValueError(f"unknown baseline estimator {name!r}; choose from {valid}")
    return spectrum, cov


def _covariance(kind: str, batch: SceneBatch, system: SystemConfig, rbp: torch.Tensor | None = None) -> torch.Tensor:
    """The covariance an estimator of ``kind`` localises on; "ml" starts from ``rbp`` (R_bp of these scenes)."""
    if kind == "true":
        return batch.R
    if kind == "ls":
        cov = r_ls(batch.y, batch.codes, batch.H, batch.noise_var, ridge_scale=system.ls_ridge_scale)
        assert isinstance(cov, torch.Tensor)  # no return_info: the covariance alone
        return cov
    if kind == "ml":
        assert rbp is not None  # baseline_estimates computes R_bp first
        return r_ml(batch.y, batch.codes, batch.H, batch.noise_var, system.k_max, start=rbp)
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
                       estimators: Iterable[str] = DEFAULT_ESTIMATORS, *, count: Count = "oracle",
                       rule: dict[str, Any] | None = None, seconds: MutableMapping[str, float] | None = None,
                       clock: Callable[[], float] = time.process_time) -> dict[str, Estimates]:
    """Each named estimator ("<music|mvdr>_<true|ls|bp>") on every scene, with the oracle K
    or (``count="auto"``) K estimated from its own covariance by ``rule`` (:func:`localize_rule`;
    MDL by default).

    ``seconds`` receives each estimator's time on ``clock`` (:func:`clock_for`) from the
    snapshots to its estimates: its covariance (counted for every estimator that uses it,
    as each would pay it alone) and its localisation.
    """
    check_count(count)
    rule = rule or localize_rule(Config())
    parsed = {name: _parse(name) for name in estimators}
    needed = {cov for _, cov in parsed.values()}
    estimates: dict[str, list[Estimates]] = {name: [] for name in parsed}
    spent = dict.fromkeys(parsed, 0.0)
    for lo in range(0, len(batch), _CHUNK):
        part = batch.index(slice(lo, lo + _CHUNK))
        covs: dict[str, torch.Tensor] = {}
        cov_s: dict[str, float] = {}
        for kind in COVARIANCES:  # "bp" comes before "ml", which starts from it
            if kind in needed or (kind == "bp" and "ml" in needed):
                t0 = clock()
                covs[kind] = _covariance(kind, part, system, rbp=covs.get("bp"))
                synchronize(covs[kind].device)
                cov_s[kind] = clock() - t0 + (cov_s["bp"] if kind == "ml" else 0.0)
        for name, (spectrum, cov) in parsed.items():
            t0 = clock()
            estimates[name].append(localize(covs[cov], system, oracle_or_none(count, part.k),
                                            method=spectrum, **rule))  # type: ignore[arg-type]
            synchronize(covs[cov].device)
            spent[name] += cov_s[cov] + clock() - t0
    if seconds is not None:
        seconds.update(spent)
    return {name: Estimates.cat(parts) for name, parts in estimates.items()}


def estimator_row(system: SystemConfig, est: Estimates, batch: SceneBatch) -> dict[str, float | None]:
    """One estimator's row of the report: RMSE of φ, θ (degrees) and r (metres, near field)
    over the matched sources, the within-1° share of all sources, detection precision,
    recall and F1 (a source is found when its Hungarian-matched estimate is within 1°), and
    the share of scenes whose source count the estimator got right (1 with the oracle K)."""
    dev = est.phi.device
    m = evaluate_estimates(est, batch.phi.to(dev), batch.theta.to(dev), batch.r.to(dev), batch.mask.to(dev),
                           tolerance_deg=1.0)
    k_right = (est.k.to("cpu") == batch.mask.to("cpu").sum(-1)).double().mean().item() if len(batch) else None
    return {"rmse_phi_deg": m["rmse_phi_deg"], "rmse_theta_deg": m["rmse_theta_deg"],
            "rmse_r_m": m["rmse_r_m"] if system.near_field else None, "within_1deg": m["within_1deg"],
            "precision": m["precision"], "recall": m["recall"], "f1": m["f1"], "k_right": k_right}


def baseline_report(system: SystemConfig, batch: SceneBatch, estimates: dict[str, Estimates], *, snr_db: float,
                    crb: bool = True, count: Count = "oracle", rule: dict[str, Any] | None = None,
                    seconds: dict[str, float] | None = None, clock: str = "cpu") -> dict[str, Any]:
    """The JSON of :func:`run_baseline` for estimates already made on ``batch``; with
    ``seconds`` (each estimator's time on the ``clock`` named, :func:`clock_for`),
    ``"scenes_per_s"`` per estimator and ``"clock"`` too."""
    check_count(count)
    report: dict[str, Any] = {
        "preset": system.preset, "snr_db": float(snr_db), "n": len(batch), "count": count,
        "count_rule": describe_rule(rule or localize_rule(Config())) if count == "auto" else None,
        "estimators": {name: estimator_row(system, est, batch) for name, est in estimates.items()},
        "crb": _crb_summary(system, batch) if crb else None}
    if seconds is not None:
        report["scenes_per_s"] = {name: len(batch) / max(seconds[name], 1e-9) for name in estimates if name in seconds}
        report["clock"] = clock
    return report


def run_baseline(cfg_or_system: Config | SystemConfig | str, snr_db: float, n: int, k: int | None,
                 seed: int, estimators: Iterable[str] = DEFAULT_ESTIMATORS, *, crb: bool = True,
                 device: torch.device | str | None = None, count: Count = "oracle") -> dict[str, Any]:
    """Simulate ``n`` scenes at ``snr_db`` (``k`` sources each, or K drawn per scene when
    None) and evaluate each estimator with the oracle K, or with K estimated from its own
    covariance (``count="auto"``, by the config's ``eval.count_rule``).

    Returns ``{"preset", "snr_db", "n", "count", "count_rule", "estimators": {name: {"rmse_phi_deg",
    "rmse_theta_deg", "rmse_r_m", "within_1deg", "precision", "recall", "f1", "k_right"}},
    "crb": {"phi_deg_mean", ...}, "scenes_per_s": {name: ...}, "clock"}``; range entries are None in
    the far field, and "crb" is None when ``crb=False``. Estimator names are
    "<music|mvdr>_<true|ls|bp>".
    """
    cfg = _config_of(cfg_or_system)
    system, rule = cfg.system, localize_rule(cfg)
    estimators = tuple(estimators)
    for name in estimators:
        _parse(name)  # an unknown name fails before any simulation
    check_count(count)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of scenes must be a positive int but got {n=}")
    batch = simulate(system, n, seed=seed, snr_db=float(snr_db), k=k, device=device)
    seconds: dict[str, float] = {}
    clock_name, clock = clock_for(batch.y.device)
    estimates = baseline_estimates(system, batch, estimators, count=count, rule=rule, seconds=seconds, clock=clock)
    return baseline_report(system, batch, estimates, snr_db=snr_db, crb=crb, count=count, rule=rule,
                           seconds=seconds, clock=clock_name)


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
    """A rich Table of an evaluation's ``"lead"``: each compared row's lead over its reference."""
    from rich.table import Table

    lead = result["lead"]
    table = Table(title=f"leads [{100 * lead['level']:g}% interval, {lead['resamples']} paired resamples of "
                        f"the scenes]; positive: the row ahead of the one it is compared with")
    for col in ("row", "over", "RMSE φ (deg)", "RMSE θ (deg)", "within 1° (points)"):
        table.add_column(col, no_wrap=True, justify="left" if col in ("row", "over") else "right")
    for pair in lead["pairs"]:
        table.add_row(pair["row"], pair["over"], *lead_cells(pair))
    return table


def table_console(min_width: int = 100):
    """The console for estimator tables: a terminal's own width, and at least ``min_width``
    columns off a terminal (a pipe, a CI log), where rich would otherwise assume 80 and cut
    the tables' last characters to ellipses."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(min_width, console.width))


def _per_second(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def render_baseline(result: dict[str, Any]):
    """A rich Table of a :func:`run_baseline` or evaluation result: one row per estimator,
    then the CRB. Detection columns (precision, recall, F1, share of scenes with the right
    K) appear when K was estimated; scenes per second when the result was timed."""
    from rich.table import Table

    auto = result.get("count") == "auto"
    counted = f"K estimated on each row's covariance ({result.get('count_rule')})" if auto else "oracle K"
    title = f"{result['preset']}: {result['n']} scenes at {result['snr_db']:g} dB, {counted}"
    settings = result.get("refine_settings") or {}
    if "learned" in result["estimators"]:
        title += "; learned = MUSIC on the network's R̂"
    if result.get("refine") == "ml" and settings:
        title += (f"; learned_fit / ls_fit = the snapshot fit ({settings['eval.refine_steps']} steps, "
                  f"each source within {settings['eval.refine_radius_deg']:g}°, "
                  f"{settings.get('eval.refine_moves', 0)} rounds of global moves) started from learned / music_ls")
    speed = result.get("scenes_per_s")
    table = Table(title=title)
    columns = ["estimator", "RMSE φ (deg)", "RMSE θ (deg)", "RMSE r (m)", "within 1°"]
    if auto:
        columns += ["precision", "recall", "F1", "K right"]
    if speed:
        columns.append("scenes/CPU s" if result.get("clock") == "cpu" else "scenes/s")
    name_width = max(len(name) for name in (*result["estimators"], "√CRB median"))  # a row's name is never cut
    for col in columns:
        table.add_column(col, justify="left" if col == "estimator" else "right", no_wrap=True,
                         min_width=name_width if col == "estimator" else 8)  # "8.87e-07" whole, never "8.87…"

    def share(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.1f}%"

    for name, m in result["estimators"].items():
        cells = [name, _fmt(m["rmse_phi_deg"]), _fmt(m["rmse_theta_deg"]), _fmt(m["rmse_r_m"]),
                 share(m["within_1deg"])]
        if auto:
            cells += [share(m.get("precision")), share(m.get("recall")), share(m.get("f1")), share(m.get("k_right"))]
        if speed:
            cells.append(_per_second(speed.get(name)))
        table.add_row(*cells)
    c = result.get("crb")
    if c is not None:
        table.add_section()
        table.add_row("√CRB mean", _fmt(c["phi_deg_mean"]), _fmt(c["theta_deg_mean"]), _fmt(c["r_m_mean"]), "")
        table.add_row("√CRB median", _fmt(c["phi_deg_median"]), _fmt(c["theta_deg_median"]),
                      _fmt(c["r_m_median"]), "")
    return table


__all__ = ["COUNTS", "COVARIANCES", "DEFAULT_ESTIMATORS", "SPECTRA", "baseline_estimates", "baseline_report",
           "check_count", "clock_for", "describe_rule", "estimator_row", "lead_cells", "oracle_or_none",
           "localize_rule", "render_baseline", "render_lead", "run_baseline", "synchronize", "table_console"]

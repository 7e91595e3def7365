"""Model quality: does the learned covariance beat the classical baseline within a CPU budget?

For each preset: train on fresh scenes every epoch (nothing to memorise) for about
``--minutes`` of CPU time (process time, one thread: robust to a shared machine), then
evaluate on held-out scenes at several SNRs, with the oracle K and with K estimated from
the data (``--counts``), next to MUSIC on R_ls (the classical baseline), MUSIC on R_bp,
MUSIC on R_bp after the network's fixed likelihood steps (``music_ml``: the steps without
the network), MVDR on R_ls, MUSIC on the true R (the ceiling) and the CRB. ``learned`` is the
network's own estimate (MUSIC on R̂); with the default ``eval.refine = ml``,
``learned_fit`` is the maximum-likelihood fit to the snapshots started from it and
``ls_fit`` the same fit started from MUSIC on R_ls, so what the network adds is visible
on its own and within the fit. Every row's scenes per second are measured in the same
evaluation, per CPU second of one thread (robust to other load on the machine).
The epoch count is calibrated from a short probe so the cosine schedule fits the
budget instead of being cut off mid-way: the probe times the set-up (the first training
and validation scenes) and one steady-state epoch (fresh scenes, training, validation,
checkpoint), so the real run's CPU time lands near the budget. The budget itself is held
by :class:`~ris_model.training.budget.CpuBudget`: when the machine is busier than during the probe,
the run stops cleanly before an epoch would take it past the budget.

    python benchmarks/model_quality.py --presets tiny small --minutes 12 --json out.json
    python benchmarks/model_quality.py --presets tiny --eval-only --n 1000   # re-evaluate those runs
    python benchmarks/model_quality.py --presets tiny --eval-only --counts auto   # K estimated only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from ris_model.config import ConfigError, load_config, parse_set_args
from ris_model.evaluation.evaluate import ROW_ORDER, evaluate_run, load_run_config, with_eval_settings
from ris_model.training.budget import CpuBudget
from ris_model.training.callbacks import Callback
from ris_model.training.progress import ProgressCallback
from ris_model.training.train import Trainer

TRAINING_RECORD = "training.json"  # next to the run: lets --eval-only report what training took


class EpochClock(Callback):
    """CPU time at the end of each validation: consecutive differences are whole epochs."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_validation_end(self, trainer, metrics) -> None:
        self.marks.append(time.process_time())


def probe_costs(cfg, run_dir: Path) -> tuple[float, float]:
    """(set-up CPU s, CPU s of one steady-state epoch) of a run with this config.

    The first epoch trains on the scenes built with the Trainer; from the second on, each
    epoch also draws its fresh scenes. Timing the second epoch alone (from the first
    validation's end to the second's) measures what every later epoch costs; the mean of
    both epochs leaves half of the per-epoch scene cost out, and the set-up is paid once.
    """
    clock = EpochClock()
    t0 = time.process_time()
    probe = Trainer(cfg.with_values({"train.epochs": 2}, "benchmark"), run_dir / "probe", device="cpu",
                    callbacks=[clock])
    setup_s = time.process_time() - t0
    probe.fit()
    return setup_s, clock.marks[1] - clock.marks[0]


def train_within(preset: str, minutes: float, run_dir: Path, extra: list[str]) -> dict:
    base = load_config(preset, overrides=["train.fresh_scenes=true", *extra])
    setup_s, epoch_s = probe_costs(base, run_dir)
    epochs = max(2, int((minutes * 60 - setup_s) / epoch_s))
    cfg = base.with_values({"train.epochs": epochs}, "benchmark")
    print(f"{preset}: set-up {setup_s:.1f} CPU s, one epoch {epoch_s:.2f} CPU s -> {epochs} epochs "
          f"for {minutes:g} CPU min", file=sys.stderr)
    t0, w0 = time.process_time(), time.perf_counter()
    budget = CpuBudget(minutes * 60, start=t0)
    result = Trainer(cfg, run_dir / "run", device="cpu", callbacks=[ProgressCallback(), budget]).fit()
    info = {"minutes": minutes, "epochs": result.epochs_done, "epochs_planned": epochs,
            "stop_reason": None if result.stop_reason is None else result.stop_reason.value,
            "stop_message": result.stop_message, "train_cpu_s": time.process_time() - t0,
            "train_wall_s": time.perf_counter() - w0, "best_val_loss": result.best_val_loss}
    (run_dir / TRAINING_RECORD).write_text(json.dumps(info, indent=2))
    return info


def trained_before(preset: str, run_dir: Path) -> dict:
    """What training the run under ``run_dir`` took, as recorded when it was trained."""
    record = run_dir / TRAINING_RECORD
    if not record.is_file():
        return {"minutes": None, "epochs": None, "epochs_planned": None, "stop_reason": None, "stop_message": None,
                "train_cpu_s": None,
                "train_wall_s": None, "best_val_loss": None}
    return json.loads(record.read_text())


def add_rows(table, leads, preset: str, snr: float, count: str, res: dict) -> None:
    """One evaluation's rows in the quality table and its leads in the leads table."""
    from ris_model.baseline import lead_cells

    est, crb, speed = res["estimators"], res["crb"], res["scenes_per_s"]
    for name in [r for r in ROW_ORDER if r in est]:
        m = est[name]
        ratio = m["rmse_phi_deg"] / crb["phi_deg_median"] if crb["phi_deg_median"] else math.nan
        table.add_row(preset, f"{snr:g}", count, name, f"{m['rmse_phi_deg']:.3g}", f"{m['rmse_theta_deg']:.3g}",
                      f"{100 * m['within_1deg']:.1f}%", f"{100 * m['f1']:.1f}%", f"{ratio:.1f}",
                      f"{speed[name]:.3g}")
    table.add_row(preset, f"{snr:g}", count, "√CRB median", f"{crb['phi_deg_median']:.3g}",
                  f"{crb['theta_deg_median']:.3g}", "", "", "1.0", "", end_section=True)
    for pair in res.get("lead", {}).get("pairs", []):
        leads.add_row(preset, f"{snr:g}", count, pair["row"], pair["over"], *lead_cells(pair))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per preset, CPU minutes")
    parser.add_argument("--snrs", type=float, nargs="+", default=[0.0, 10.0, 20.0])
    parser.add_argument("--n", type=int, default=200, help="held-out scenes per SNR")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/model_quality_runs"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/model_quality.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    parser.add_argument("--counts", nargs="+", choices=("oracle", "auto"), default=["oracle", "auto"],
                        help="evaluate with the true source count, with K estimated from the data, or both")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                        help="resamples of the paired bootstrap of the leads of learned over music_ls, "
                             "music_bp and music_ml and of learned_fit over ls_fit (0: none)")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the runs already trained under --out-dir instead of training anew")
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be >= 0 (0: no intervals) but got {args.bootstrap}")
    torch.set_num_threads(1)  # the budget is CPU time: one thread makes it comparable across machines

    from rich.table import Table

    from ris_model.baseline import table_console

    trained = f"the runs in {args.out_dir}" if args.eval_only else f"~{args.minutes:g} CPU min of training"
    report: dict = {"minutes": None if args.eval_only else args.minutes, "n": args.n, "presets": {}}
    table = Table(title=f"model quality after {trained} ({args.n} held-out scenes per SNR; K: oracle = "
                        f"the true count, auto = eval.count_rule on each row's covariance)")
    for col in ("preset", "SNR", "K", "estimator"):
        table.add_column(col, no_wrap=True, justify="right" if col == "SNR" else "left")
    for col in ("RMSE φ°", "RMSE θ°", "within 1°", "F1", "φ / √CRB", "scenes / CPU s"):
        table.add_column(col, justify="right", no_wrap=True)
    leads = Table(title=f"leads [95% interval, {args.bootstrap} paired resamples of the scenes]; "
                        f"positive: the row ahead")
    for col in ("preset", "SNR", "K", "row", "over", "RMSE φ°", "RMSE θ°", "within 1°, points"):
        leads.add_column(col, no_wrap=True, justify="left" if col in ("preset", "K", "row", "over") else "right")
    # training records every --set in the run; an evaluation of runs trained before takes
    # the evaluation-time ones (eval.refine*) from here
    eval_overrides = {}
    if args.eval_only:
        missing = [p for p in args.presets if not (args.out_dir / p / "run" / "checkpoints" / "best.pt").is_file()]
        if missing:
            parser.error(f"--eval-only: no trained run for {', '.join(missing)} under {args.out_dir}; "
                         f"train once without --eval-only")
        try:
            eval_overrides = parse_set_args(args.overrides)
            for p in args.presets:
                with_eval_settings(load_run_config(args.out_dir / p / "run"), eval_overrides)
        except ConfigError as exc:
            parser.error(str(exc))
    for preset in args.presets:
        run_dir = args.out_dir / preset
        info = trained_before(preset, run_dir) if args.eval_only else train_within(preset, args.minutes, run_dir,
                                                                                 args.overrides)
        per_snr: dict = {}
        for snr in args.snrs:
            for count in args.counts:
                t0 = time.perf_counter()
                res = evaluate_run(run_dir / "run", n=args.n, snr_db=snr, count=count, seed=4242,
                                   overrides=eval_overrides, lead_resamples=args.bootstrap)
                print(f"{preset}: evaluated {args.n} scenes at {snr:g} dB, {count} K, in "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
                per_snr.setdefault(str(snr), {})[count] = res
                add_rows(table, leads, preset, snr, count, res)
        report["presets"][preset] = {**info, "eval": per_snr}
    table_console(min_width=130).print(table)
    if leads.row_count:
        table_console(min_width=120).print(leads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

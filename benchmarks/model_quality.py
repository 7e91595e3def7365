"""Model quality: does the learned covariance beat the classical baseline within a CPU budget?

For each preset: train on fresh scenes every epoch (nothing to memorise) for about
``--minutes`` of CPU time (process time, one thread: robust to a shared machine), then evaluate on held-out scenes at several SNRs, next to
MUSIC on R_ls (the classical baseline), MUSIC on the true R (the ceiling) and the CRB.
The epoch count is calibrated from a short probe so the cosine schedule fits the
budget instead of being cut off mid-way: the probe times the set-up (the first training
and validation scenes) and one steady-state epoch (fresh scenes, training, validation,
checkpoint), so the real run's CPU time lands near the budget.

    python benchmarks/model_quality.py --presets tiny small --minutes 12 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import math
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from ris_model.callbacks import Callback
from ris_model.config import load_config
from ris_model.evaluation import evaluate_run
from ris_model.progress import ProgressCallback
from ris_model.train import Trainer

ROWS = ("music_learned", "music_ls", "music_true")


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
    result = Trainer(cfg, run_dir / "run", device="cpu", callbacks=[ProgressCallback()]).fit()
    return {"epochs": epochs, "train_cpu_s": time.process_time() - t0, "train_wall_s": time.perf_counter() - w0,
            "best_val_loss": result.best_val_loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per preset, CPU minutes")
    parser.add_argument("--snrs", type=float, nargs="+", default=[0.0, 10.0, 20.0])
    parser.add_argument("--n", type=int, default=200, help="held-out scenes per SNR")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/model_quality_runs"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/model_quality.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the budget is CPU time: one thread makes it comparable across machines

    from rich.console import Console
    from rich.table import Table

    report: dict = {"minutes": args.minutes, "presets": {}}
    table = Table(title=f"model quality after ~{args.minutes:g} CPU min of training (oracle K, held-out scenes)")
    for col in ("preset", "SNR", *[f"{r} φ/θ (deg)" for r in ROWS], "√CRB φ/θ", "learned/CRB φ", "within 1° learned / ls"):
        table.add_column(col, justify="right")
    for preset in args.presets:
        run_dir = args.out_dir / preset
        info = train_within(preset, args.minutes, run_dir, args.overrides)
        per_snr = {}
        for snr in args.snrs:
            res = evaluate_run(run_dir / "run", n=args.n, snr_db=snr, seed=4242)
            per_snr[str(snr)] = res
            est, crb = res["estimators"], res["crb"]
            ratio = est["music_learned"]["rmse_phi_deg"] / crb["phi_deg_median"] if crb["phi_deg_median"] else math.nan
            table.add_row(preset, f"{snr:g}",
                          *[f"{est[r]['rmse_phi_deg']:.3g}/{est[r]['rmse_theta_deg']:.3g}" for r in ROWS],
                          f"{crb['phi_deg_median']:.3g}/{crb['theta_deg_median']:.3g}", f"{ratio:.1f}",
                          f"{est['music_learned']['within_1deg']:.2f} / {est['music_ls']['within_1deg']:.2f}")
        report["presets"][preset] = {**info, "eval": per_snr}
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

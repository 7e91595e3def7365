"""What the health monitor costs per training step, measured against the same loop without it.

Three variants of one Trainer run side by side in one process, interleaved round by
round so machine noise hits them alike: no monitor, the monitor with every default
detector on every step, and the monitor every 16 steps. A step is timed from its
``on_batch_start`` to the end of its ``on_after_optimizer_step`` (the timer is the last
callback, so the monitor's own hooks are inside the measurement). Reported: median step
time per variant and the ratio to the unmonitored loop.

    python benchmarks/overhead.py --presets tiny small --rounds 6 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from healthcheck.hooks.ris_trainer import RisTrainerHealth
from ris_model.batches import build_scenes
from ris_model.callbacks import Callback
from ris_model.config import load_config
from ris_model.train import Trainer

VARIANTS = ("off", "every step", "every 16 steps")


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_batch_start(self, trainer, batch_index):
        self._t0 = time.perf_counter()

    def on_after_optimizer_step(self, trainer, metrics):
        self.times.append(time.perf_counter() - self._t0)


def run_round(cfg, data, variant: str, tmp: Path, warmup: int) -> list[float]:
    timer = StepTimer()
    callbacks: list[Callback] = []
    if variant != "off":
        every = 1 if variant == "every step" else 16
        callbacks.append(RisTrainerHealth.build(tmp / "health", every=every, console=_quiet_console()))
    trainer = Trainer(cfg, tmp / variant.replace(" ", "_"), device="cpu", callbacks=callbacks + [timer],
                      train_scenes=data, val_scenes=data.take(slice(0, cfg.train.batch_size)))
    trainer.fit()
    return timer.times[warmup:]


def _quiet_console():
    from rich.console import Console

    return Console(file=open("/dev/null", "w"))


def measure(preset: str, rounds: int, steps: int, warmup: int) -> dict:
    cfg = load_config(preset, overrides=["train.epochs=1"])
    data = build_scenes(cfg.system, cfg.train.batch_size * (steps + warmup), seed=0)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate who goes first
            for variant in order:
                times[variant] += run_round(cfg, data, variant, Path(tmp) / f"{r}", warmup)
            print(f"{preset}: round {r + 1}/{rounds} done", file=sys.stderr)
    base = statistics.median(times["off"])
    return {v: {"median_ms": 1e3 * statistics.median(t), "ratio": statistics.median(t) / base, "steps": len(t)}
            for v, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=16, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    results = {p: measure(p, args.rounds, args.steps, args.warmup) for p in args.presets}
    table = Table(title="health monitor overhead per training step (median, interleaved, CPU)")
    for col in ("preset", "variant", "median step (ms)", "ratio to off", "steps timed"):
        table.add_column(col, justify="right")
    for preset, rows in results.items():
        for variant, row in rows.items():
            table.add_row(preset, variant, f"{row['median_ms']:.2f}", f"{row['ratio']:.3f}", str(row["steps"]))
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

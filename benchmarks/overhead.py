"""What the health monitor costs per training step, measured against the same loop without it.

Four variants of one Trainer run side by side in one process, interleaved round by
round so machine noise hits them alike: no monitor, a callback that does nothing (the
control: its ratio shows how far the machine's noise moves a ratio), the monitor with
every default detector on every step, and the monitor every 16 steps. A step is timed from its
``on_batch_start`` to the end of its ``on_after_optimizer_step`` (the timer is the last
callback, so the monitor's own hooks are inside the measurement). Reported: median step
time per variant and its ratio to the unmonitored loop, and the time spent inside the
monitor's step hooks (mean per step) as a share of the unmonitored step: the ratio of
medians carries the machine's noise, the hook share only the monitor's own cost.

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

from healthcheck.ris.trainer_callback import RisTrainerHealth
from ris_model.batches import build_scenes
from ris_model.config import load_config
from ris_model.training.callbacks import Callback
from ris_model.training.train import Trainer

VARIANTS = ("off", "no-op callback", "every step", "every 16 steps")


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_batch_start(self, trainer, batch_index):
        self._t0 = time.perf_counter()

    def on_after_optimizer_step(self, trainer, metrics):
        self.times.append(time.perf_counter() - self._t0)


class TimedHealth(RisTrainerHealth):
    """The monitor's callback, with the time spent in its two step hooks summed per step."""

    def __init__(self, monitor) -> None:
        super().__init__(monitor)
        self.hook_times: list[float] = []
        self._spent = 0.0

    def on_after_backward(self, trainer, metrics):
        t0 = time.perf_counter()
        super().on_after_backward(trainer, metrics)
        self._spent = time.perf_counter() - t0

    def on_after_optimizer_step(self, trainer, metrics):
        t0 = time.perf_counter()
        super().on_after_optimizer_step(trainer, metrics)
        self.hook_times.append(self._spent + time.perf_counter() - t0)


def run_round(cfg, data, variant: str, tmp: Path, warmup: int) -> tuple[list[float], list[float]]:
    """Step times and (monitored variants) the monitor's hook time per step."""
    timer = StepTimer()
    health: TimedHealth | None = None
    if variant.startswith("every"):
        every = 1 if variant == "every step" else 16
        health = TimedHealth.build(tmp / "health", every=every, console=_quiet_console())
    callbacks: list[Callback] = [health] if health is not None else []
    if variant == "no-op callback":  # the control: what any callback's presence costs, and the noise
        callbacks = [Callback()]
    trainer = Trainer(cfg, tmp / variant.replace(" ", "_"), device="cpu", callbacks=callbacks + [timer],
                      train_scenes=data, val_scenes=data.take(slice(0, cfg.train.batch_size)))
    trainer.fit()
    return timer.times[warmup:], (health.hook_times[warmup:] if health is not None else [])


def _quiet_console():
    from rich.console import Console

    return Console(file=open("/dev/null", "w"))


def measure(preset: str, rounds: int, steps: int, warmup: int) -> dict:
    cfg = load_config(preset, overrides=["train.epochs=1"])
    data = build_scenes(cfg.system, cfg.train.batch_size * (steps + warmup), seed=0)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    hooks: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate who goes first
            for variant in order:
                steps_t, hook_t = run_round(cfg, data, variant, Path(tmp) / f"{r}", warmup)
                times[variant] += steps_t
                hooks[variant] += hook_t
            print(f"{preset}: round {r + 1}/{rounds} done", file=sys.stderr)
    base = statistics.median(times["off"])
    out = {}
    for v, t in times.items():
        hook = statistics.mean(hooks[v]) if hooks[v] else 0.0  # mean: every-16 steps are mostly 0
        out[v] = {"median_ms": 1e3 * statistics.median(t), "ratio": statistics.median(t) / base,
                  "hook_ms": 1e3 * hook, "hook_share": hook / base, "steps": len(t)}
    return out


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
    for col in ("preset", "variant", "median step (ms)", "ratio to off", "hooks (ms/step)", "hooks / off step",
                "steps timed"):
        table.add_column(col, justify="right")
    for preset, rows in results.items():
        for variant, row in rows.items():
            table.add_row(preset, variant, f"{row['median_ms']:.2f}", f"{row['ratio']:.3f}",
                          f"{row['hook_ms']:.3f}", f"{100 * row['hook_share']:.2f} %", str(row["steps"]))
    Console(width=max(Console().width, 110)).print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

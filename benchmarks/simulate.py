"""Throughput of the physics and the classical pipeline, per preset.

For each preset: scenes per second of simulate(), milliseconds per scene of the R_ls
solve (batched) and of a MUSIC search on R_ls (grid + peaks + refinement + the joint fit
of the K sources; the one-off grid build is reported on its own), next to textbook MUSIC
(``music_fit="peaks"``) on the same covariances in the same process, so the joint fit's
cost reads as a ratio. Prints a table and writes JSON.

    python benchmarks/simulate.py --presets tiny,small --n 64 --json benchmarks/results/simulate.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ris_model.config import PRESETS, load_config
from ris_model.estimators import clear_grid_cache, localize, r_ls, search_grid
from ris_model.physics import simulate

DEFAULT_JSON = Path(__file__).parent / "results" / "simulate.json"
# Scenes per R_ls call: what a data loader or the baseline would batch.
LS_CHUNK = 50


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_preset(preset: str, n: int, seed: int = 0) -> dict[str, Any]:
    system = load_config(preset).system
    simulate(system, 2, seed=seed)  # warm-up: first-call allocations, lazy imports
    batch, t_sim = _timed(lambda: simulate(system, n, seed=seed, snr_db=10.0))

    def solve_all() -> tuple[torch.Tensor, torch.Tensor]:
        parts, iters = [], []
        for lo in range(0, n, LS_CHUNK):
            b = batch.index(slice(lo, lo + LS_CHUNK))
            R, info = r_ls(b.y, b.codes, b.H, b.noise_var, ridge_scale=system.ls_ridge_scale, return_info=True)
            parts.append(R)
            iters.append(info.iterations)
        return torch.cat(parts), torch.cat(iters)

    (R, iters), t_ls = _timed(solve_all)
    clear_grid_cache()
    _, t_grid = _timed(lambda: search_grid(system))
    _, t_music = _timed(lambda: localize(R, system, batch.k, method="music"))
    _, t_peaks = _timed(lambda: localize(R, system, batch.k, method="music", music_fit="peaks"))
    return {
        "preset": preset, "n": n, "N": system.n_elements, "M": system.bs_antennas, "L": system.snapshots,
        "simulate_scenes_per_s": n / t_sim,
        "r_ls_ms_per_scene": 1e3 * t_ls / n,
        "r_ls_method": "exact" if bool((iters == 0).all()) else "cg",
        "r_ls_mean_cg_iterations": float(iters.double().mean()),
        "grid_build_s": t_grid,
        "grid_points": search_grid(system).n_points,
        "music_ms_per_scene": 1e3 * t_music / n,
        "music_peaks_ms_per_scene": 1e3 * t_peaks / n,
    }


def _print(rows: list[dict[str, Any]]) -> None:
    headers = ("preset", "N", "simulate (scenes/s)", "R_ls (ms/scene)", "CG its", "grid build (s)",
               "grid points", "MUSIC (ms/scene)", "peaks only (ms/scene)", "joint / peaks")
    cells = [(r["preset"], str(r["N"]), f"{r['simulate_scenes_per_s']:.0f}", f"{r['r_ls_ms_per_scene']:.1f}",
              "exact" if r["r_ls_method"] == "exact" else f"{r['r_ls_mean_cg_iterations']:.0f}",
              f"{r['grid_build_s']:.2f}", str(r["grid_points"]), f"{r['music_ms_per_scene']:.1f}",
              f"{r['music_peaks_ms_per_scene']:.1f}", f"{r['music_ms_per_scene'] / r['music_peaks_ms_per_scene']:.2f}")
             for r in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="simulate / R_ls / MUSIC throughput")
        for h in headers:
            table.add_column(h, justify="left" if h == "preset" else "right")
        for c in cells:
            table.add_row(*c)
        Console().print(table)
    else:
        print("\t".join(headers))
        for c in cells:
            print("\t".join(c))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small,paper",
                        help="comma-separated presets (default: tiny,small,paper)")
    parser.add_argument("--n", type=int, default=64, help="scenes per preset (default: 64)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output file (default: {DEFAULT_JSON})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the machine is shared, and 1 is reproducible)")
    args = parser.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    if args.n < 1:
        parser.error(f"--n must be >= 1 but got {args.n}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = [bench_preset(p, args.n) for p in presets]
    _print(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema": 1, "torch": torch.__version__, "threads": args.threads,
               "machine": platform.machine(), "cpus": os.cpu_count(),
               # other work on the machine slows every number down; keep the context
               "load_average_1min": [load_before, os.getloadavg()[0]], "results": rows}
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

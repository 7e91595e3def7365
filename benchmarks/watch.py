"""How fast `healthcheck watch` catches up on a long run, how much memory it needs, and
how long a new line waits before it is judged in --follow.

    python benchmarks/watch.py [--sizes 100000,1000000] [--epoch-every 100] [--json OUT] [--quick]

The file is a healthy run's: step lines with two terms and three modules, and (by
default) an epoch and an eval line after every 100 steps, as `ris-model train` writes.

Each scan runs in a fresh child process, so its peak RSS (ru_maxrss) is its own; two
sizes ten times apart show whether memory grows with the file. Scans per size: `read`
(tailer + JSON only), `record` (+ StepRecord), `judge-dicts` (every stream detector on
every line, each line parsed as a dict: the baseline) and `judge` (what `watch --once`
does: regular lines decoded into typed rows, `watch.reading.LineLayout`). Each judge scan runs
`--repeats` times, alternating, and the median is reported with its ratio to the
baseline's: the machine's noise moves both alike. Goals: judge 1M lines in <= 5 s, memory
flat in size, follow lag <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# One step line of docs/run-dir.md with two terms and three modules (~520 bytes).
_TEMPLATE = (
    '{"schema":1,"kind":"step","step":%d,"epoch":%d,"time":%.3f,"rank":0,"loss":%.6f,'
    '"terms":{"cov":%.6f,"subspace":%.6f},"weights":{"cov":1.0,"subspace":0.1},'
    '"primary":"cov","lr":[0.001],"grad_norm":{"_total":%.5f,"trunk":%.5f,"head":%.5f,'
    '"encoder":%.5f},"update_norm":{"trunk":0.00123,"head":0.00101,"encoder":0.00098},'
    '"param_norm":{"trunk":12.5,"head":3.25,"encoder":8.0},"steps_taken":%d,'
    '"batches_seen":%d,"skipped":false}\n')


_EPOCH = ('{"schema":1,"kind":"epoch","step":%d,"epoch":%d,"time":%.3f,"rank":0,"loss":%.6f,'
          '"terms":{"cov":%.6f,"subspace":%.6f},"weights":{"cov":1.0,"subspace":0.1},"primary":"cov",'
          '"lr":[0.001],"steps_taken":%d,"batches_seen":%d}\n')
_EVAL = ('{"schema":1,"kind":"eval","step":%d,"epoch":%d,"time":%.3f,"rank":0,"loss":%.6f,'
         '"terms":{"cov":%.6f,"subspace":%.6f},"weights":{"cov":1.0,"subspace":0.1},"metrics":{}}\n')


def write_metrics(path: str, n: int, epoch_every: int = 0) -> None:
    """n lines of a healthy run, written in blocks (a few seconds for 1M); with
    ``epoch_every``, an epoch line and an eval line after every that many step lines, as
    ``ris-model train`` writes them (they count in n)."""
    with open(path, "w") as fh:
        block = []
        i = written = 0
        while written < n:
            cov = 1.0 / (1.0 + 1e-4 * i) + 0.001 * math.sin(i)
            sub = 0.5 * cov + 0.001 * math.cos(i)
            g = 0.5 + 0.1 * math.sin(0.01 * i)
            block.append(_TEMPLATE % (i, i // 1000, 1.7e9 + 0.01 * i, cov + 0.1 * sub, cov, sub,
                                      g, 0.8 * g, 0.5 * g, 0.3 * g, i + 1, i + 1))
            written += 1
            if epoch_every and (i + 1) % epoch_every == 0:
                e, t = i // epoch_every, 1.7e9 + 0.01 * i
                block.append(_EPOCH % (i, e, t, cov + 0.1 * sub, cov, sub, i + 1, i + 1))
                block.append(_EVAL % (i, e, t, 1.1 * cov, cov, sub))
                written += 2
            i += 1
            if len(block) >= 10_000:
                fh.write("".join(block))
                block.clear()
        fh.write("".join(block))


# ----------------------------------------------------------------------------- child
def child(mode: str, run_dir: str) -> None:
    from healthcheck.record import StepRecord
    from healthcheck.watch import RunWatch
    from healthcheck.watch.reading import JsonLinesTail

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    events = 0
    if mode == "read":
        n = sum(1 for _ in JsonLinesTail(os.path.join(run_dir, "metrics.jsonl")).poll())
    elif mode == "record":
        n = sum(1 for x in JsonLinesTail(os.path.join(run_dir, "metrics.jsonl")).poll()
                if StepRecord.from_metrics_line(x) is not None)
    else:
        w = RunWatch(run_dir, typed=mode == "judge")
        w.poll_all()
        n, events = w.state.lines, len(w.book)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"lines": n, "seconds": dt, "peak_rss_mb": peak / 1024,
                      "rss_growth_mb": (peak - base) / 1024, "events": events}))


def run_child(mode: str, run_dir: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, run_dir], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- lag
def follow_lag(interval: float, lines: int = 60, gap: float = 0.05) -> dict:
    """Seconds from a line being flushed to `watch` having judged it, polling every `interval`."""
    from healthcheck.watch import RunWatch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "metrics.jsonl")
        open(path, "w").close()
        written: dict[int, float] = {}
        judged: dict[int, float] = {}
        watch = RunWatch(tmp, on_line=lambda line: judged.setdefault(line["step"], time.monotonic()))

        def writer():
            with open(path, "a") as fh:
                for i in range(lines):
                    fh.write(_TEMPLATE % (i, 0, time.time(), 1.0, 1.0, 0.5, 0.5, 0.4, 0.3, 0.2, i + 1, i + 1))
                    fh.flush()
                    written[i] = time.monotonic()
                    time.sleep(gap)

        t = threading.Thread(target=writer)
        t.start()
        deadline = time.monotonic() + lines * gap + 10
        while len(judged) < lines and time.monotonic() < deadline:
            watch.poll()  # the judged timestamp is taken before the detectors run;
            time.sleep(interval)  # their cost per line is in the scan numbers
        t.join()
        watch.close()
    lags = sorted(judged[i] - written[i] for i in written if i in judged)
    return {"interval": interval, "lines": len(lags), "median_s": statistics.median(lags),
            "p95_s": lags[int(0.95 * (len(lags) - 1))], "max_s": lags[-1]}


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--modes", default="read,record,judge-dicts,judge")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each judge scan (median reported)")
    ap.add_argument("--json", dest="json_out", default=os.path.join(ROOT, "benchmarks", "results", "watch.json"))
    ap.add_argument("--quick", action="store_true", help="sizes 10000,100000 (a smoke run)")
    ap.add_argument("--epoch-every", type=int, default=100,
                    help="an epoch and an eval line after every N step lines, as real runs have (0: none)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "RUN_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [10_000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                           "loadavg_at_start": os.getloadavg()}, "epoch_every": args.epoch_every,
               "scan": [], "lag": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            run_dir = os.path.join(tmp, f"run{n}")
            os.makedirs(run_dir)
            t0 = time.perf_counter()
            write_metrics(os.path.join(run_dir, "metrics.jsonl"), n, args.epoch_every)
            size_mb = os.path.getsize(os.path.join(run_dir, "metrics.jsonl")) / 2**20
            print(f"wrote {n:,} lines ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f}s", flush=True)
            modes = args.modes.split(",")
            judges = [m for m in modes if m.startswith("judge")]
            runs: dict[str, list[dict]] = {m: [] for m in modes}
            for mode in modes:
                if mode not in judges:
                    runs[mode].append(run_child(mode, run_dir))
            for _ in range(max(1, args.repeats)):  # interleaved, so drift hits both alike
                for mode in judges:
                    runs[mode].append(run_child(mode, run_dir))
            for mode in modes:
                r = dict(sorted(runs[mode], key=lambda x: x["seconds"])[len(runs[mode]) // 2])  # median
                r.update(mode=mode, size_mb=size_mb, us_per_line=1e6 * r["seconds"] / max(r["lines"], 1),
                         all_seconds=[x["seconds"] for x in runs[mode]])
                results["scan"].append(r)
                print(f"  {mode:11} {r['lines']:>9,} lines {r['seconds']:8.2f}s "
                      f"{r['us_per_line']:6.1f} us/line  peak RSS {r['peak_rss_mb']:6.1f} MB "
                      f"(+{r['rss_growth_mb']:.1f} MB while scanning)"
                      + (f"  runs {', '.join(f'{x:.2f}' for x in r['all_seconds'])}" if len(runs[mode]) > 1 else ""),
                      flush=True)
            os.remove(os.path.join(run_dir, "metrics.jsonl"))
    for interval in (0.5, 0.1):
        r = follow_lag(interval)
        results["lag"].append(r)
        print(f"follow lag, --interval {interval}: median {r['median_s']:.3f}s  p95 {r['p95_s']:.3f}s  "
              f"max {r['max_s']:.3f}s over {r['lines']} lines", flush=True)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    print()
    print(f"{'mode':12}{'lines':>11}{'MB':>8}{'seconds':>10}{'us/line':>9}{'peak RSS MB':>13}{'vs dicts':>10}")
    for r in results["scan"]:
        base = next((b for b in results["scan"] if b["mode"] == "judge-dicts" and b["lines"] == r["lines"]), None)
        ratio = f"{r['seconds'] / base['seconds']:.2f}" if base and r["mode"] == "judge" else ""
        r["ratio_to_dicts"] = float(ratio) if ratio else None
        print(f"{r['mode']:12}{r['lines']:>11,}{r['size_mb']:>8.0f}{r['seconds']:>10.2f}"
              f"{r['us_per_line']:>9.1f}{r['peak_rss_mb']:>13.1f}{ratio:>10}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    with open(args.json_out, "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
    main()

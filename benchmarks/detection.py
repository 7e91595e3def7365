"""What the health monitor catches: every registered fault x seeds, and healthy runs.

    python benchmarks/detection.py [--preset tiny] [--steps N] [--seeds S] [--faults NAME ...]
        [--healthy N] [--faults-from FILE.py ...] [--json OUT] [--keep-runs DIR] [--list]
        [--detectors-from FILE.py ...] [--no-preflight] [--subject NAME|all]

Each run is a short monitored fit of the ris_model Trainer (EPOCHS epochs, N steps in
all) with a policy that records every event and never stops. A faulty run is detected
when an error-level (or critical) event fires at or after the step where its fault
starts; a healthy run with one is a false alarm, and one with warnings counts toward
the warning rate. Healthy runs draw their learning rate, weight decay, width and loss
weight factors from the HPO search space. As in CI, the gate's preflight checks run on
each faulted trainer before its fit; a failed check counts as an error event
``preflight.<check>`` at step 0 (``--no-preflight`` scores the monitor alone; the summary
reports the monitor alone either way). ``--faults-from`` adds the ``FAULTS`` list of a
Python file (see ``healthcheck.faults``); ``--detectors-from`` adds the ``DETECTORS`` list
of a Python file to the default detectors, to measure a candidate detector. Goals: recall
>= 95 %, no false alarm, median latency <= 1 step for faults that act from step 0, the whole default run <= 15 min.

``--json OUT`` writes ``{"summary": {recall, recall_by_family, false_alarm_rate,
warning_rate_healthy, median_latency_steps, max_latency_steps, wall_s, monitor_only_recall,
monitor_only_false_alarm_rate, monitor_only_median_latency_steps, step0_median_latency_steps,
monitor_only_step0_median_latency_steps}, "runs": [{fault, seed, detected, first_step, codes,
monitor_detected, monitor_first_step}]}`` (``fault`` is null for healthy runs; the
``monitor_*`` values leave the preflight events out).

``--subject`` picks what is trained: ``ris`` (the default, above), one of the plain-PyTorch
subjects of ``healthcheck.testing.subjects`` (``charlm``, ``imgcls``, ``autoencoder``:
each fault x ``--subject-seeds`` seeds and every healthy variant, ``--subject-steps``
steps a run, the monitor alone), or ``all`` (every one). The JSON then gains
``by_subject`` ({subject: {recall, monitor_only_recall, false_alarms, false_alarm_rate,
median_latency_steps, missed, ...}}), ``subject_runs`` and ``monitor_cost`` (the
monitor's cost per step of the ``charlm`` loop). ``--cost`` measures only that cost, on
every plain subject or the one ``--subject`` names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_STYLE = {"critical": "bold white on red", "error": "bold red", "warning": "yellow", "info": "dim"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from ris_model.config import PRESETS

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="ris_model preset (default tiny)")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per run, over 3 epochs (default 24)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per fault (default 3)")
    p.add_argument("--faults", nargs="+", metavar="NAME", help="only these faults (default: all)")
    p.add_argument("--healthy", type=int, default=10, help="healthy runs on HPO-space configs (default 10)")
    p.add_argument(
        "--faults-from",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE.py",
        help="add the FAULTS list of these Python files",
    )
    p.add_argument(
        "--detectors-from",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE.py",
        help="add the DETECTORS list of these Python files to the default detectors",
    )
    p.add_argument("--json", metavar="OUT", help="write the summary and every run as JSON")
    p.add_argument("--keep-runs", metavar="DIR", help="keep each run directory (metrics, health.jsonl) here")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument(
        "--no-preflight", action="store_true", help="score the monitor alone: no preflight checks before each fit"
    )
    p.add_argument("--list", action="store_true", help="list the faults and exit")
    p.add_argument("--subject", default="ris", metavar="NAME",
                   help="ris (default), charlm, imgcls, autoencoder, or all")
    p.add_argument("--subject-steps", type=int, default=200, help="steps per plain-subject run (default 200)")
    p.add_argument("--subject-seeds", type=int, default=2, help="seeds per plain-subject fault (default 2)")
    p.add_argument("--cost", action="store_true",
                   help="only measure the monitor's cost per step on the plain subjects (--subject picks one)")
    args = p.parse_args(argv)
    for name in ("steps", "seeds", "healthy", "threads"):
        if getattr(args, name) < (1 if name in ("steps", "threads") else 0):
            p.error(f"--{name} must be >= {1 if name in ('steps', 'threads') else 0}, but got {getattr(args, name)}")
    return args


def collect_faults(args: argparse.Namespace) -> list:
    from healthcheck.faults import check_faults, load_faults, select_faults
    from healthcheck.ris.faults import REGISTRY

    faults = list(REGISTRY)
    for path in args.faults_from:
        faults += load_faults(path)
    faults = check_faults(faults, where="registry + --faults-from")
    return select_faults(faults, args.faults) if args.faults else faults


@contextlib.contextmanager
def _progress(console, total):
    """``on_run(result, done, n)``: a bar on a terminal, a plain line per run otherwise."""
    if not console.is_terminal:

        def say(r, done, n):
            verdict = f"error at step {r.first_step} ({r.first_error_code})" if r.detected else "no error"
            print(f"[{done}/{n}] {r.fault or 'healthy'} seed {r.seed}: {verdict}, {r.wall_s:.1f}s", flush=True)

        yield say
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        bar_id = bar.add_task("detection", total=total)
        yield lambda r, done, n: bar.update(bar_id, completed=done, description=f"{r.fault or 'healthy'} s{r.seed}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # logs and pipes: wide enough that the code lists stay readable
        console = Console(highlight=False, width=max(console.width, 200))
    from healthcheck.testing.subjects import SUBJECTS

    if args.cost:
        import torch

        from healthcheck.testing.detection import monitor_cost

        torch.set_num_threads(args.threads)

        costs = [monitor_cost(name) for name in (SUBJECTS if args.subject in ("all", "ris") else [args.subject])]
        show_cost(console, costs)
        write_json(args, console, {"monitor_cost": costs})
        return 0
    if args.subject not in ("ris", "all", *SUBJECTS):
        console.print(f"[bold red]error:[/] --subject must be ris, all or one of {', '.join(SUBJECTS)}, "
                      f"but got {args.subject!r}")
        return 2
    plain = run_plain_subjects(args, console, list(SUBJECTS) if args.subject == "all" else [args.subject]
                               ) if args.subject != "ris" and not args.list else None
    if args.subject not in ("ris", "all") or (plain is not None and args.seeds == 0 and args.healthy == 0):
        write_json(args, console, plain)  # no ris run asked for: the plain subjects alone
        return 0
    try:
        faults = collect_faults(args)
    except (ValueError, TypeError) as err:
        console.print(f"[bold red]error:[/] {err}")
        return 2
    if args.list:
        show_faults(console, faults)
        return 0

    import torch

    from healthcheck.ris.detection import default_detectors, load_detectors, run_benchmark

    torch.set_num_threads(args.threads)
    detectors = None
    if args.detectors_from:
        try:
            detectors = default_detectors() + [d for path in args.detectors_from for d in load_detectors(path)]
        except (ValueError, TypeError) as err:
            console.print(f"[bold red]error:[/] {err}")
            return 2
    total = len(faults) * args.seeds + args.healthy
    try:
        with _progress(console, total) as on_run:
            bench = run_benchmark(
                faults,
                seeds=args.seeds,
                healthy=args.healthy,
                preset=args.preset,
                steps=args.steps,
                device=args.device,
                keep_dir=args.keep_runs,
                detectors=detectors,
                on_run=on_run,
                preflight=not args.no_preflight,
            )
    except ValueError as err:
        console.print(f"[bold red]error:[/] {err}")
        return 2
    show_results(console, faults, bench)
    out = bench.to_json()
    if plain is not None:
        s = bench.summary
        plain["by_subject"]["ris"] = {"recall": s["recall"], "monitor_only_recall": s["monitor_only_recall"],
                                      "false_alarm_rate": s["false_alarm_rate"],
                                      "monitor_only_false_alarm_rate": s["monitor_only_false_alarm_rate"],
                                      "median_latency_steps": s["median_latency_steps"]}
        out.update(plain)
    write_json(args, console, out)
    return 0


def write_json(args: argparse.Namespace, console, data: dict | None) -> None:
    if args.json and data is not None:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
        console.print(f"wrote {out}")


def show_cost(console, costs: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="monitor cost per step (median over interleaved rounds)", title_justify="left")
    for col in ("subject", "variant", "median step (ms)", "vs bare", "inside the health calls (ms/step)"):
        table.add_column(col)
    for cost in costs:
        for name, v in cost["variants"].items():
            table.add_row(cost["subject"], name, f"{1e3 * v['median_step_s']:.2f}", f"{100 * v['vs_bare']:+.1f}%",
                          f"{1e3 * v['inside_calls_s']:.3f}")
    console.print(table)


def run_plain_subjects(args: argparse.Namespace, console, names: list[str]) -> dict:
    """Train the plain-PyTorch subjects' faults and healthy variants; print and return the
    per-subject summary as the JSON's ``by_subject``, ``subject_runs`` and ``monitor_cost``."""
    from rich.table import Table

    from healthcheck.testing.detection import monitor_cost, run_subjects

    def on_run(r, done, n):
        verdict = f"error at step {r.first_step} ({r.first_code})" if r.detected else "no error"
        console.print(f"[{done}/{n}] {r.subject} {r.fault or 'healthy:' + r.variant} s{r.seed}: {verdict}, "
                      f"{r.wall_s:.1f}s", highlight=False)

    runs, summary = run_subjects(names, seeds=args.subject_seeds, steps=args.subject_steps,
                                 faults=args.faults, on_run=on_run, threads=args.threads)
    table = Table(title="plain-PyTorch subjects: detection per fault (monitor alone)", title_justify="left")
    for col in ("subject", "fault", "detected", "latency", "codes fired (error+ first)"):
        table.add_column(col)
    rows: dict[tuple, list] = {}
    for r in runs:
        rows.setdefault((r.subject, r.fault or f"healthy:{r.variant}"), []).append(r)
    for (subject, fault), rs in rows.items():
        hits = sum(r.detected for r in rs)
        lats = sorted({r.latency for r in rs if r.latency is not None})
        codes = sorted({c for r in rs for c, sev in r.codes.items()},
                       key=lambda c: -max(("info", "warning", "error", "critical").index(r.codes.get(c, "info"))
                                          for r in rs))
        style = ("red" if hits else "green") if fault.startswith("healthy") else (
            "green" if hits == len(rs) else "red" if hits == 0 else "yellow")
        table.add_row(subject, fault, f"[{style}]{hits}/{len(rs)}[/]", ",".join(map(str, lats)) or "-",
                      " ".join(codes) or "-")
    console.print(table)
    st = Table(title="plain-PyTorch subjects: summary", title_justify="left")
    for col in ("subject", "recall", "false alarms (healthy runs)", "median latency", "missed"):
        st.add_column(col)
    for name, s in [*summary["by_subject"].items(), ("all", summary["all"])]:
        recall = "n/a" if s["recall"] is None else f"{100 * s['recall']:.0f}%"
        st.add_row(name, f"{recall} of {s['faulty_runs']}", f"{s['false_alarms']} of {s['healthy_runs']}",
                   str(s["median_latency_steps"]), " ".join(s["missed"]) or "-")
    console.print(st)
    cost = monitor_cost("charlm") if "charlm" in names else None
    if cost is not None:
        show_cost(console, [cost])
    console.print(f"wall time {summary['wall_s']} s")
    return {"by_subject": summary["by_subject"], "subjects_all": summary["all"],
            "subject_runs": [r.to_json() for r in runs], "monitor_cost": cost}


# ------------------------------------------------------------------------------ output
def _codes_markup(runs) -> str:
    """Every code fired in any seed, coloured by the highest severity it reached."""
    from healthcheck.events import Severity

    seen: dict[str, Severity] = {}
    for r in runs:
        for c in r.codes:
            seen[c] = max(seen.get(c, Severity.INFO), Severity.parse(r.severity[c]))
    order = sorted(seen, key=lambda c: -seen[c])
    return " ".join(f"[{_STYLE[str(seen[c])]}]{c}[/]" for c in order) or "[dim]-[/]"


def show_faults(console, faults) -> None:
    from rich.table import Table

    table = Table(title="faults", title_justify="left")
    for col in ("fault", "family", "row", "from step", "expected codes", "what"):
        table.add_column(col)
    for f in faults:
        table.add_row(
            f.name,
            f.family,
            ",".join(map(str, f.catalogue_rows)) or "-",
            str(f.start_step),
            " ".join(f.expected_codes),
            f.description,
        )
    console.print(table)


def show_results(console, faults, bench) -> None:
    from rich.table import Table

    by_fault: dict[str, list] = {}
    for r in bench.runs:
        by_fault.setdefault(r.fault, []).append(r)
    table = Table(title="detection per fault (error level and up, from the fault's start step)", title_justify="left")
    for col, kw in (
        ("fault", {}),
        ("family", {}),
        ("row", {}),
        ("detected", {"justify": "right"}),
        ("first step", {"justify": "right"}),
        ("latency", {"justify": "right"}),
        ("codes fired (max severity)", {}),
        ("note", {}),
    ):
        table.add_column(col, **kw)
    for f in faults:
        runs = by_fault.get(f.name, [])
        if not runs:
            continue
        hits = sum(r.detected for r in runs)
        firsts = ",".join("-" if r.first_step is None else str(r.first_step) for r in runs)
        lats = [r.latency for r in runs if r.detected]
        lat = "-" if not lats else (str(lats[0]) if min(lats) == max(lats) else f"{min(lats)}-{max(lats)}")
        notes = []
        if any(r.crashed for r in runs):
            notes.append(
                "crashed " + ("after detection" if all(r.detected for r in runs if r.crashed) else "UNDETECTED")
            )
        if any(r.early for r in runs):
            notes.append("error before start: " + ",".join(sorted({c for r in runs for c in r.early})))
        style = "green" if hits == len(runs) else ("red" if hits == 0 else "yellow")
        table.add_row(
            f.name,
            f.family,
            ",".join(map(str, f.catalogue_rows)) or "-",
            f"[{style}]{hits}/{len(runs)}[/]",
            firsts,
            lat,
            _codes_markup(runs),
            "; ".join(notes),
        )
    console.print(table)

    healthy = by_fault.get(None, [])
    if healthy:
        ht = Table(title="healthy runs (configs from the HPO space)", title_justify="left")
        for col in ("seed", "lr", "wd", "width", "weights (subspace, peak, ortho)", "errors", "warnings/info"):
            ht.add_column(col)
        for r in healthy:
            c = r.config
            errors = [x for x in r.codes if r.severity[x] in ("error", "critical")]
            others = [x for x in r.codes if x not in errors]
            ht.add_row(
                str(r.seed),
                f"{c.get('lr', 0):.2e}",
                f"{c.get('weight_decay', 0):.1e}",
                str(c.get("width")),
                f"{c.get('w_subspace', 0):.3g}, {c.get('w_peak', 0):.3g}, {c.get('w_ortho', 0):.2g}",
                f"[bold red]{' '.join(errors)}[/]" if errors else "[green]none[/]",
                " ".join(others) or "-",
            )
        console.print(ht)

    s = bench.summary
    step0 = [r.latency for r in bench.runs if r.fault is not None and r.start_step == 0 and r.detected]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    st = Table(title="summary", title_justify="left", show_header=False)
    st.add_column("what")
    st.add_column("value")
    n_faulty = sum(1 for r in bench.runs if r.fault is not None)
    st.add_row("runs", f"{n_faulty} faulty ({len(by_fault) - bool(healthy)} faults), {len(healthy)} healthy")
    st.add_row("recall", pct(s["recall"]))
    st.add_row("recall by family", ", ".join(f"{k} {pct(v)}" for k, v in s["recall_by_family"].items()) or "n/a")
    st.add_row("false-alarm rate (healthy, error+)", pct(s["false_alarm_rate"]))
    st.add_row("warning rate (healthy)", pct(s["warning_rate_healthy"]))
    st.add_row("latency, steps (median / max)", f"{s['median_latency_steps']} / {s['max_latency_steps']}")
    st.add_row("latency of faults from step 0 (median)", str(statistics.median(step0)) if step0 else "n/a")
    st.add_row("monitor alone: recall", pct(s["monitor_only_recall"]))
    st.add_row("monitor alone: false-alarm rate", pct(s["monitor_only_false_alarm_rate"]))
    st.add_row(
        "monitor alone: latency (median; faults from step 0)",
        f"{s['monitor_only_median_latency_steps']}; {s['monitor_only_step0_median_latency_steps']}",
    )
    st.add_row("wall time", f"{s['wall_s']:.1f} s")
    console.print(st)


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark and print one table of figures against its targets (issues 9 and 15).

    .venv/bin/python bench/run.py [--quick] [--only drain,stream]

Each bench script runs as its own subprocess, one after another (they would
otherwise share this machine's cores), with its own redis-server and flowqd
processes. Their tables are echoed as they finish; the JSON lines they print
(one per figure) are collected into the final table, each figure named
``script.figure``, with its target and whether it is met. ``--quick`` gives
each script small options so the whole run takes under 2 minutes; the
figures are then noisier and the scale figures come from 6 s jobs.
"""

from __future__ import annotations

import argparse
import json
import operator
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# The repository root instead of bench/ (whose modules, http.py say, would shadow stdlib ones).
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs

ROOT = Path(__file__).resolve().parent.parent

# (script, full-run options, --quick options), in the order they run.
SCRIPTS: list[tuple[str, list[str], list[str]]] = [
    ("drain", ["--jobs", "100000"], ["--jobs", "10000"]),
    ("latency", [], ["--jobs", "1000", "--warmup", "50"]),
    ("http_api", [], ["--clients", "20", "--seconds", "3", "--waiting", "0"]),
    # The same through a main role with server.processes = 2 (SO_REUSEPORT).
    (
        "http_api",
        ["--processes", "2", "--waiting", "0"],
        ["--processes", "2", "--clients", "20", "--seconds", "3", "--waiting", "0"],
    ),
    ("stream", [], ["--quick"]),
    ("scale", [], ["--quick"]),
]


@attrs.frozen
class Target:
    figure: str  # script.figure as collected
    compare: Callable[[float, float], bool]
    bound: float
    text: str


TARGETS = [
    Target("drain.drain_jobs_s", operator.ge, 25000, ">= 25,000"),
    Target("drain.worker_cpu_us_per_job", operator.le, 30, "<= 30"),
    Target("drain.redis_cpu_us_per_job", operator.le, 20, "<= 20"),
    Target("drain.enqueue_bulk_jobs_s", operator.ge, 100000, ">= 100,000"),
    Target("latency.latency_p50_ms", operator.le, 1, "<= 1"),
    Target("latency.latency_p99_ms", operator.le, 3, "<= 3"),
    Target("http_api.http_20_predictions_s", operator.ge, 600, ">= 600"),
    Target("http_api.http_20_main_cpu_ms_per_req", operator.le, 1.0, "<= 1.0"),
    Target("http_api.http_20_main_rss_mb", operator.lt, 100, "< 100"),
    Target("http_api.http_20_worker_rss_mb", operator.lt, 100, "< 100"),
    Target("http_api.http_p2_20_predictions_s", operator.ge, 900, ">= 900"),
    Target("http_api.http_p2_20_main_rss_mb", operator.lt, 100, "< 100"),
    Target("http_api.http_100_main_rss_mb", operator.lt, 100, "< 100"),
    Target("http_api.http_100_worker_rss_mb", operator.lt, 100, "< 100"),
    Target("stream.stream_events_s", operator.ge, 50000, ">= 50,000"),
    Target("stream.stream_main_rss_mb", operator.lt, 100, "< 100"),
    Target("stream.stream_worker_rss_mb", operator.lt, 100, "< 100"),
    Target("stream.stream_missing_events", operator.eq, 0, "= 0"),
    Target("scale.scale_10000_peak_rss_mb", operator.le, 170, "<= 170"),
    Target("scale.scale_10000_stalls", operator.eq, 0, "= 0"),
    Target("scale.scale_10000_retried_jobs", operator.eq, 0, "= 0"),
]
# Targets a full run must show but a quick run may leave out (http_api --clients 20 only).
OPTIONAL_IN_QUICK = {"http_api.http_100_main_rss_mb", "http_api.http_100_worker_rss_mb"}


@attrs.frozen
class Figure:
    name: str
    value: float
    unit: str


def run_script(script: str, options: list[str]) -> tuple[list[Figure], str | None]:
    """Run one bench script; (its figures, a failure description or None)."""
    argv = [sys.executable, str(ROOT / "bench" / f"{script}.py"), *options]
    print(f"== {script} {' '.join(options)}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        return [], "timed out after 900 s"
    figures = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
                figures.append(Figure(record["bench"], float(record["value"]), record["unit"]))
                continue
            except (ValueError, KeyError, TypeError):
                pass
        print(f"   {line}")
    print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(f"   exit status {done.returncode}:\n{tail}", flush=True)
        return figures, f"exit status {done.returncode}"
    return figures, None


def verdict(target: Target | None, value: float | None) -> str:
    if target is None:
        return ""
    if value is None:
        return "missing"
    return "met" if target.compare(value, target.bound) else "NOT MET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs, under 2 minutes")
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated scripts to run (default: all)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    values: dict[str, Figure] = {}
    failures: dict[str, str] = {}
    ran: list[str] = []
    for script, full, quick in SCRIPTS:
        if args.only and script not in args.only:
            continue
        ran.append(script)
        figures, failure = run_script(script, quick if args.quick else full)
        if failure:
            failures[script] = failure
        for figure in figures:
            values[f"{script}.{figure.name}"] = figure

    targets = {
        t.figure: t
        for t in TARGETS
        if t.figure.split(".")[0] in ran
        and not (args.quick and t.figure in OPTIONAL_IN_QUICK and t.figure not in values)
    }
    print()
    print(f"{'figure':42} {'value':>12} {'unit':10} {'target':>11}  verdict")
    for name in [*values, *(t for t in targets if t not in values)]:
        figure = values.get(name)
        target = targets.get(name)
        shown = f"{figure.value:12,.2f}" if figure else f"{'-':>12}"
        unit = figure.unit if figure else ""
        print(
            f"{name:42} {shown} {unit:10} {target.text if target else '':>11}  "
            f"{verdict(target, figure.value if figure else None)}"
        )
    met = sum(
        1
        for name, t in targets.items()
        if name in values and t.compare(values[name].value, t.bound)
    )
    print(
        f"\ntargets met: {met} of {len(targets)}"
        + (" (quick run: small sizes, noisier figures)" if args.quick else "")
        + f"; total {time.perf_counter() - started:.0f} s"
    )
    for script, failure in failures.items():
        print(f"{script}: {failure}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()

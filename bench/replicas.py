"""What WAIT costs: latency and drain with redis.wait_replicas 0 and 1, one replica.

    .venv/bin/python bench/replicas.py [--pairs 3] [--quick]

Runs ``bench/latency.py`` and ``bench/drain.py`` as subprocesses, each with
``--replicas 1`` (a replica redis-server on loopback beside its primary, in
both runs: only WAIT differs), alternately with ``--wait-replicas 0`` and
``1`` (the order flips every pair, so a drift of the machine's load falls on
both). Prints, per figure, the median of each setting with its spread
(min-max), and the median ratio; one JSON line per median.

``start_replicas`` is what ``latency.py`` and ``drain.py`` use for their
``--replicas`` and ``--wait-replicas`` options.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The repository root instead of bench/ (whose modules, http.py say, would shadow stdlib ones).
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redisproc import RedisServer

ROOT = Path(__file__).resolve().parent.parent
# (script, options, --quick options, figures compared)
RUNS: list[tuple[str, list[str], list[str], list[str]]] = [
    (
        "latency",
        ["--jobs", "2000", "--rate", "500"],
        ["--jobs", "1000", "--rate", "500", "--warmup", "50"],
        ["enqueue_p50_ms", "enqueue_p99_ms", "latency_p50_ms", "latency_p99_ms"],
    ),
    (
        "drain",
        ["--jobs", "20000"],
        ["--jobs", "10000"],
        ["drain_jobs_s", "enqueue_single_jobs_s", "enqueue_bulk_jobs_s", "worker_cpu_us_per_job"],
    ),
]


def info(port: int, section: str) -> dict[str, str]:
    text = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", section],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def start_replicas(primary: RedisServer, count: int, timeout: float = 30.0) -> list[RedisServer]:
    """``count`` replicas of ``primary`` on loopback, returned once each is online
    (synced, so a WAIT counts it). The caller closes them."""
    replicas = []
    for _ in range(count):
        replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
        replica.start()
        replicas.append(replica)
    deadline = time.monotonic() + timeout
    while count:
        fields = info(primary.port, "replication")
        online = sum(
            "state=online" in value for key, value in fields.items() if key.startswith("slave")
        )
        if online >= count:
            break
        if time.monotonic() > deadline:
            for replica in replicas:
                replica.close()
            raise RuntimeError(f"only {online} of {count} replicas came online in {timeout:g}s")
        time.sleep(0.05)
    return replicas


def run_once(script: str, options: list[str], wait: int) -> dict[str, float]:
    argv = [sys.executable, str(ROOT / "bench" / f"{script}.py"), *options]
    argv += ["--replicas", "1", "--wait-replicas", str(wait)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    figures = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            figures[record["bench"]] = float(record["value"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="runs of each setting, alternating")
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--only", choices=[r[0] for r in RUNS], default=None)
    args = parser.parse_args()
    for script, full, quick, compared in RUNS:
        if args.only and script != args.only:
            continue
        samples: dict[int, list[dict[str, float]]] = {0: [], 1: []}
        for pair in range(args.pairs):
            for wait in (0, 1) if pair % 2 == 0 else (1, 0):
                figures = run_once(script, quick if args.quick else full, wait)
                samples[wait].append(figures)
                shown = ", ".join(f"{name} {figures[name]:,.2f}" for name in compared)
                print(f"{script} pair {pair + 1} wait_replicas={wait}: {shown}", flush=True)
        print(f"\n{script}: median (min-max) of {args.pairs} runs each, one replica on loopback")
        print(f"{'figure':26} {'wait_replicas=0':>26} {'wait_replicas=1':>26} {'ratio':>7}")
        for name in compared:
            cells = []
            medians = []
            for wait in (0, 1):
                values = [s[name] for s in samples[wait]]
                medians.append(statistics.median(values))
                cells.append(f"{medians[-1]:,.2f} ({min(values):,.2f}-{max(values):,.2f})")
            ratio = medians[1] / medians[0] if medians[0] else float("nan")
            print(f"{name:26} {cells[0]:>26} {cells[1]:>26} {ratio:7.2f}")
            for wait, median in zip((0, 1), medians, strict=True):
                print(
                    json.dumps({"bench": f"{script}_wait{wait}_{name}", "value": round(median, 2)})
                )
        print(flush=True)


if __name__ == "__main__":
    main()

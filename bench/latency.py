"""Latency: no-op jobs offered one at a time at a steady rate to one worker process.

    .venv/bin/python bench/latency.py [--jobs 2000] [--rate 500]

Starts its own redis-server and `flowqd --role worker`. Each job (one `echo`
node, all the usual events) is enqueued on its own, on a fixed schedule of
``--rate`` jobs/s; a watcher started just before the enqueue records when the
terminal event reaches this process. Latency is enqueue call to terminal
event seen: what an API client waiting on the job would see, doorbell and
read included. The job records' own timestamps (created and finished, whole
milliseconds of Redis's clock) are reported too. The first ``--warmup`` jobs
are not counted. Prints a table and one JSON line per figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import trio

# The repository root instead of bench/ (whose modules, http.py say, would shadow stdlib ones).
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.drain import cpu_seconds, emit, rss_mb
from flowqd.config import PluginsConfig, load_config
from flowqd.flows import FlowStore
from flowqd.jobs import TERMINAL_EVENTS, JobSpec, new_job_id
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import open_broker
from flowqd.queue.base import Broker
from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def offer(
    broker: Broker, spec: JobSpec, job_id: str, seen: dict[str, float], t0: float
) -> None:
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            async for event in broker.watch_events(job_id):
                if event.name in TERMINAL_EVENTS:
                    seen[job_id] = time.perf_counter() - t0

        nursery.start_soon(watch)
        await broker.enqueue([spec])


async def run_jobs(
    broker: Broker, flow: tuple[str, int], n: int, rate: float
) -> tuple[dict[str, float], list[str]]:
    seen: dict[str, float] = {}
    ids: list[str] = []
    with trio.fail_after(n / rate + 60):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            for i in range(n):
                await trio.sleep_until(start + i / rate)
                job_id = new_job_id()
                ids.append(job_id)
                spec = JobSpec(flow[0], flow[1], {"question": f"q{i}"}, job_id=job_id)
                nursery.start_soon(offer, broker, spec, job_id, seen, time.perf_counter())
    return seen, ids


async def bench(url: str, jobs: int, rate: float, warmup: int) -> dict[str, float]:
    env = {"REDIS_URL": url, "QUEUE_NAME": "bench-latency",
           "REMOVE_ON_COUNT": str(jobs + warmup)}
    config = load_config(environ=env, overrides=["redis.command_timeout_s=60"])
    results: dict[str, float] = {}
    async with open_broker(config) as broker, trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        flows = FlowStore(broker, collect_executors(load_plugins(PluginsConfig())))
        flow = await flows.put(
            {"id": "noop", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}
        )
        async with start_daemon(["--role", "worker", "--set", "log.level=info"],
                                env=env) as worker:
            pid = worker.process.pid
            await run_jobs(broker, flow, warmup, rate)
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            seen, ids = await run_jobs(broker, flow, jobs, rate)
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
            latencies = [seen[job_id] * 1000 for job_id in ids]
            results["offered_jobs_s"] = jobs / wall
            results["latency_p50_ms"] = percentile(latencies, 50)
            results["latency_p90_ms"] = percentile(latencies, 90)
            results["latency_p99_ms"] = percentile(latencies, 99)
            results["latency_max_ms"] = max(latencies)
            results["latency_mean_ms"] = statistics.fmean(latencies)
            recorded = []
            for job_id in ids:
                job = await broker.get_job(job_id)
                assert job is not None and job.finished_at is not None, job
                recorded.append((job.finished_at - job.created_at) * 1000)
            results["record_p50_ms"] = percentile(recorded, 50)
            results["record_p99_ms"] = percentile(recorded, 99)
            results["worker_cpu_us_per_job"] = cpu / jobs * 1e6
            results["worker_rss_mb"] = rss_mb(pid)
        nursery.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500.0, help="jobs offered per second")
    parser.add_argument("--warmup", type=int, default=100, help="jobs run first, not counted")
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    try:
        results = trio.run(bench, server.url, args.jobs, args.rate, args.warmup)
    finally:
        server.close()
    units = {"_jobs_s": "jobs/s", "_ms": "ms", "_us_per_job": "us/job", "_mb": "MB"}
    print(f"{'figure':28} {'value':>12}")
    for name, value in results.items():
        unit = next(u for suffix, u in units.items() if name.endswith(suffix))
        print(f"{name:28} {value:12,.2f} {unit}")
    for name, value in results.items():
        unit = next(u for suffix, u in units.items() if name.endswith(suffix))
        emit(name, value, unit)


if __name__ == "__main__":
    main()

"""Scale: N concurrent in-flight `delay` jobs in one worker process.

    .venv/bin/python bench/scale.py [--sizes 1000,5000,10000] [--delay-s 30] [--quick]

For each N, on its own queue and a fresh worker (`worker.lock_ttl_s=5`, so
locks are renewed every 2.5 s while the jobs wait): N jobs of one `delay`
node are bulk-enqueued while the queue is paused, the queue is resumed, and
the bench waits until all N are active, then until all N have completed.
Reports per N: time until all were running, the worker's peak RSS while they
were in flight (and its RSS when idle before), lock renewal calls (the
worker's own counter), stalls (jobs the stalled check took back: must be 0)
and jobs that did not complete on their first attempt (must be 0), worker CPU
per job, and RSS per 1,000 in-flight jobs (constant if cost grows linearly).
``--quick`` runs 6 s delays. Prints a table and one JSON line per figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

# The repository root instead of bench/ (whose modules, http.py say, would shadow stdlib ones).
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.drain import cpu_seconds, emit, rss_mb
from flowqd.config import PluginsConfig, load_config
from flowqd.flows import FlowStore
from flowqd.jobs import JobSpec, JobStatus
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import open_broker
from flowqd.queue.keys import QueueKeys
from flowqd.redis import open_redis
from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer

LOCK_TTL_S = 5


async def metric(health: str, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{health}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def one_size(url: str, n: int, delay_s: float) -> dict[str, float]:
    queue = f"bench-scale-{n}"
    env = {"REDIS_URL": url, "QUEUE_NAME": queue, "REMOVE_ON_COUNT": str(n)}
    config = load_config(environ=env, overrides=["redis.command_timeout_s=60"])
    results: dict[str, float] = {}
    async with open_broker(config) as broker, trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
        flow_id, version = await flows.put(
            {
                "id": "wait",
                "nodes": [{"id": "d", "type": "delay", "params": {"ms": round(delay_s * 1000)}}],
                "output": "d",
            }
        )
        await broker.control.pause()
        ids: list[str] = []
        for start in range(0, n, 1000):
            ids += await broker.jobs.enqueue(
                [
                    JobSpec(flow_id, version, {"question": f"q{i}"})
                    for i in range(start, min(n, start + 1000))
                ]
            )
        args = [
            "--role",
            "worker",
            "--set",
            "log.level=info",
            "--set",
            f"worker.lock_ttl_s={LOCK_TTL_S}",
            "--set",
            "redis.command_timeout_s=60",
        ]
        async with start_daemon(args, env=env) as worker:
            pid = worker.process.pid
            results["idle_rss_mb"] = rss_mb(pid)
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            await broker.control.resume()
            peak = 0.0
            while (await broker.control.counts())[JobStatus.ACTIVE] < n:
                peak = max(peak, rss_mb(pid))
                await trio.sleep(0.05)
            results["all_running_s"] = time.perf_counter() - t0
            while True:
                counts = await broker.control.counts()
                peak = max(peak, rss_mb(pid))
                if counts[JobStatus.COMPLETED] + counts[JobStatus.FAILED] >= n:
                    break
                await trio.sleep(0.2)
            results["wall_s"] = time.perf_counter() - t0
            results["peak_rss_mb"] = peak
            results["rss_mb_per_1k_jobs"] = (peak - results["idle_rss_mb"]) / n * 1000
            results["worker_cpu_us_per_job"] = (cpu_seconds(pid) - cpu0) / n * 1e6
            results["renewal_calls"] = await metric(
                worker.health, "flowqd_worker_lock_renewals_total"
            )
        results["completed"] = (await broker.control.counts())[JobStatus.COMPLETED]
        # Stalls: the stalled check counts them on the job ("stl"); a job
        # taken back is also claimed again, so its attempts exceed 1.
        keys = QueueKeys(queue)
        async with open_redis(config.redis) as redis:
            replies = await redis.pipeline(
                [(b"HMGET", keys.job(job_id), b"stl", b"att") for job_id in ids]
            )
        results["stalls"] = sum(int(stl or 0) for stl, _ in replies)
        results["retried_jobs"] = sum(1 for _, att in replies if int(att or 0) != 1)
        nursery.cancel_scope.cancel()
    return results


async def bench(url: str, sizes: list[int], delay_s: float) -> dict[int, dict[str, float]]:
    return {n: await one_size(url, n, delay_s) for n in sizes}


UNITS = {
    "_mb": "MB",
    "_s": "s",
    "_calls": "calls",
    "stalls": "jobs",
    "retried_jobs": "jobs",
    "completed": "jobs",
    "_us_per_job": "us/job",
    "_per_1k_jobs": "MB/1k jobs",
}


def unit_of(name: str) -> str:
    return next(u for suffix, u in UNITS.items() if name.endswith(suffix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,10000")
    parser.add_argument("--delay-s", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="6 s delays")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    delay_s = 6.0 if args.quick else args.delay_s
    server = RedisServer()
    server.start()
    try:
        results = trio.run(bench, server.url, sizes, delay_s)
    finally:
        server.close()
    names = list(next(iter(results.values())))
    print(f"{'figure':24}" + "".join(f"{f'N={n:,}':>14}" for n in sizes))
    for name in names:
        row = "".join(f"{results[n][name]:14,.1f}" for n in sizes)
        print(f"{name:24}{row}  {unit_of(name)}")
    for n in sizes:
        for name, value in results[n].items():
            emit(f"scale_{n}_{name}", value, unit_of(name))


if __name__ == "__main__":
    main()

"""Latency: no-op jobs offered one at a time at a steady rate to one worker process.

    .venv/bin/python bench/latency.py [--jobs 2000] [--rate 500] [--replicas 1] [--wait-replicas 1]

Starts its own redis-server and `flowqd --role worker`. Each job (one `echo`
node, all the usual events) is enqueued on its own, on a fixed schedule of
``--rate`` jobs/s. Latency runs from the start of the enqueue call to the
arrival here of the last events doorbell naming the job: the doorbell is
published by the script call that appends a job's events, and the one that
writes the terminal event and the outcome is the job's last (nothing is
appended after it). So it is enqueue-to-complete as a subscriber sees it,
one pub/sub hop included; ``enqueue_p50/p99_ms`` is the enqueue call alone
(what a producer waits for its acknowledgement). The job records' own timestamps (created and
finished, whole milliseconds of Redis's clock) are reported too. The first
``--warmup`` jobs are not counted. Prints a table and one JSON line per figure.
``--replicas`` and ``--wait-replicas``: as for drain.py (bench/replicas.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson
import trio

# The repository root instead of bench/ (whose modules, http.py say, would shadow stdlib ones).
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.drain import cpu_seconds, emit, rss_mb
from bench.replicas import start_replicas
from flowqd.config import PluginsConfig, load_config
from flowqd.flows import FlowStore
from flowqd.jobs import JobSpec, JobStatus, new_job_id
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import Broker, open_broker
from flowqd.queue.keys import QueueKeys
from flowqd.redis import Redis, open_redis
from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def listen(
    redis: Redis,
    channel: str,
    rung: dict[str, float],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with redis.subscribe(channel) as subscription:
        task_status.started()
        async for _, message in subscription:
            now = time.perf_counter()
            for job_id in orjson.loads(message):
                rung[job_id] = now  # the last ring for a job is its completion


async def run_jobs(
    broker: Broker, flow: tuple[str, int], n: int, rate: float, rung: dict[str, float]
) -> tuple[list[str], dict[str, float], dict[str, float]]:
    ids: list[str] = []
    sent: dict[str, float] = {}
    acknowledged: dict[str, float] = {}
    with trio.fail_after(n / rate + 60):
        start = trio.current_time()
        for i in range(n):
            await trio.sleep_until(start + i / rate)
            job_id = new_job_id()
            ids.append(job_id)
            sent[job_id] = time.perf_counter()
            await broker.jobs.enqueue(
                [JobSpec(flow[0], flow[1], {"question": f"q{i}"}, job_id=job_id)]
            )
            # The producer's wait (with redis.wait_replicas, WAIT's included).
            acknowledged[job_id] = time.perf_counter()
        while any(job_id not in rung for job_id in ids):  # noqa: ASYNC110
            await trio.sleep(0.01)
        # Rings published before the outcome was recorded are not the last.
        while (await broker.control.counts())[JobStatus.COMPLETED] < len(rung):  # noqa: ASYNC110
            await trio.sleep(0.01)
        await trio.sleep(0.05)
    return ids, {job_id: sent[job_id] for job_id in ids}, acknowledged


async def bench(
    url: str, jobs: int, rate: float, warmup: int, extra_env: dict[str, str] | None = None
) -> dict[str, float]:
    queue = "bench-latency"
    env = {"REDIS_URL": url, "QUEUE_NAME": queue, "REMOVE_ON_COUNT": str(jobs + warmup)}
    env.update(extra_env or {})
    config = load_config(environ=env, overrides=["redis.command_timeout_s=60"])
    results: dict[str, float] = {}
    rung: dict[str, float] = {}
    async with (
        open_broker(config) as broker,
        open_redis(config.redis) as redis,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(listen, redis, QueueKeys(queue).events_channel, rung)
        flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
        flow = await flows.put(
            {"id": "noop", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}
        )
        async with start_daemon(["--role", "worker", "--set", "log.level=info"], env=env) as worker:
            pid = worker.process.pid
            await run_jobs(broker, flow, warmup, rate, rung)
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            ids, sent, acknowledged = await run_jobs(broker, flow, jobs, rate, rung)
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
            latencies = [(rung[job_id] - sent[job_id]) * 1000 for job_id in ids]
            results["offered_jobs_s"] = (
                jobs / (max(sent.values()) - min(sent.values())) * ((jobs - 1) / jobs)
            )
            results["latency_p50_ms"] = percentile(latencies, 50)
            results["latency_p90_ms"] = percentile(latencies, 90)
            results["latency_p99_ms"] = percentile(latencies, 99)
            results["latency_max_ms"] = max(latencies)
            results["latency_mean_ms"] = statistics.fmean(latencies)
            enqueues = [(acknowledged[job_id] - sent[job_id]) * 1000 for job_id in ids]
            results["enqueue_p50_ms"] = percentile(enqueues, 50)
            results["enqueue_p99_ms"] = percentile(enqueues, 99)
            recorded = []
            for job_id in ids:
                job = await broker.jobs.get_job(job_id)
                assert job is not None and job.status == JobStatus.COMPLETED, job
                assert job.finished_at is not None
                recorded.append((job.finished_at - job.created_at) * 1000)
            results["record_p50_ms"] = percentile(recorded, 50)
            results["record_p99_ms"] = percentile(recorded, 99)
            results["worker_cpu_us_per_job"] = cpu / jobs * 1e6
            results["worker_rss_mb"] = rss_mb(pid)
            del wall
        nursery.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500.0, help="jobs offered per second")
    parser.add_argument("--warmup", type=int, default=100, help="jobs run first, not counted")
    parser.add_argument(
        "--replicas", type=int, default=0, help="replica redis-servers beside the primary"
    )
    parser.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        help="redis.wait_replicas for the bench and the worker (starts that many replicas)",
    )
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    replicas = start_replicas(server, max(args.replicas, args.wait_replicas))
    extra = {"FLOWQD_REDIS__WAIT_REPLICAS": str(args.wait_replicas)}
    try:
        results = trio.run(bench, server.url, args.jobs, args.rate, args.warmup, extra)
    finally:
        for replica in replicas:
            replica.close()
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

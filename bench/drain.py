"""Enqueue and drain: no-op jobs through one real `flowqd --role worker` process.

    .venv/bin/python bench/drain.py [--jobs 20000] [--concurrency 50] [--keep 10000]
                                    [--replicas 1] [--wait-replicas 1] [--priorities 10]

Starts its own redis-server and worker. The queue is paused while the jobs
are enqueued (so the enqueue figures are the producer's alone): 2,000 one at
a time, then half of the rest in bulk calls of ``--batch`` jobs one after
another (``enqueue_bulk_serial``), the other half from two producers at once
(``enqueue_bulk``, the figure issue 9's target reads). Then the worker
is started (``worker.concurrency`` = ``--concurrency``, 50 by default: the
figure issue 15's drain target is read at) and becomes ready, then the queue
is resumed and the drain timed, until nothing waits or runs. Retention is the
daemon's default (``--keep``, queue.remove_on_count, 10,000), so the records
of most jobs are deleted during the drain and Redis's figure includes that;
``--keep 0`` keeps every job. (Until 2026-12-06 this bench ran with the
equivalent of ``--concurrency 10000 --keep 0``: figures quoted before then
are those.)
Each job is one `echo` node with every event a job normally writes
(started, node_start, node_end, and the terminal `end`). Worker CPU comes from
/proc (user + system) between resume and the last completion; Redis CPU
(``redis_cpu_us_per_job``, issue 15's figure) from ``INFO cpu`` deltas
(used_cpu_sys + used_cpu_user) over the same span, with the /proc figure of the
redis pid beside it (``redis_proc_cpu_us_per_job``). ``redis_commands_per_job``
is the sum of the ``calls`` of every ``INFO commandstats`` line after CONFIG
RESETSTAT at resume: the commands scripts run inside count on their own lines,
and each EVALSHA line counts too (one command Redis parses and dispatches per
script call). The bench's own polling of the counts (8 commands every 20 ms)
is included: a few hundredths of a command per job. The per-command
breakdown (calls and usec per job; usec is Redis's wall clock, so it swells
on a busy machine, and EVALSHA's includes its inner commands') goes to stderr.
Prints a table and one JSON line per figure. ``--replicas`` starts replica
redis-servers beside the primary; ``--wait-replicas`` sets redis.wait_replicas
(bench/replicas.py compares 0 and 1). ``--priorities N`` gives job number i
priority ``i % N + 1``: every job is prioritised (the sorted set, not the
FIFO list), N levels interleaved, to measure what priorities cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import trio

# The repository root instead of bench/ (whose modules, http.py say, would shadow stdlib ones).
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.replicas import start_replicas
from flowqd.config import PluginsConfig, load_config
from flowqd.flows import FlowStore
from flowqd.jobs import JobSpec, JobStatus
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import open_broker
from flowqd.redis import Redis, open_redis
from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def info_fields(text: bytes) -> dict[str, str]:
    fields = {}
    for line in text.decode().splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name] = value
    return fields


async def redis_cpu_seconds(redis: Redis) -> float:
    fields = info_fields(await redis.execute(b"INFO", b"cpu"))
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


def emit(name: str, value: float, unit: str) -> None:
    print(json.dumps({"bench": name, "value": round(value, 2), "unit": unit}))


async def bench(
    url: str,
    redis_pid: int,
    jobs: int,
    batch: int,
    py_spy: str | None = None,
    extra_env: dict[str, str] | None = None,
    priorities: int = 0,
    keep: int = 0,
) -> dict[str, float]:
    env = {"REDIS_URL": url, "QUEUE_NAME": "bench-drain", "REMOVE_ON_COUNT": str(keep or jobs)}
    env.update(extra_env or {})
    config = load_config(environ=env, overrides=["redis.command_timeout_s=60"])
    results: dict[str, float] = {}
    async with (
        open_broker(config) as broker,
        open_redis(config.redis, name="bench") as redis,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(broker.run)
        flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
        flow_id, version = await flows.put(
            {"id": "noop", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}
        )
        await broker.control.pause()

        def job(n: int, question: str) -> JobSpec:
            priority = n % priorities + 1 if priorities else 0
            return JobSpec(flow_id, version, {"question": question}, priority=priority)

        # One at a time (a round trip each), on a sample.
        sample = min(jobs, 2000)
        t = time.perf_counter()
        for i in range(sample):
            await broker.jobs.enqueue([job(i, f"s{i}")])
        results["enqueue_single_jobs_s"] = sample / (time.perf_counter() - t)

        # Bulk: calls of --batch jobs, first from one producer (each call
        # waits for the last), then from two at once, as a loader with a
        # nursery would send them: Redis runs one call while the client
        # encodes the next. The first half of the rest goes serially.
        bulk = jobs - sample
        batches = [
            [job(start + i, f"q{start + i}") for i in range(min(batch, bulk - start))]
            for start in range(0, bulk, batch)
        ]
        serial, concurrent = batches[: len(batches) // 2], batches[len(batches) // 2 :]
        t = time.perf_counter()
        for specs in serial:
            await broker.jobs.enqueue(specs)
        results["enqueue_bulk_serial_jobs_s"] = sum(map(len, serial)) / (time.perf_counter() - t)

        async def producer(share: list[list[JobSpec]]) -> None:
            for specs in share:
                await broker.jobs.enqueue(specs)

        t = time.perf_counter()
        async with trio.open_nursery() as producers:
            producers.start_soon(producer, concurrent[0::2])
            producers.start_soon(producer, concurrent[1::2])
        results["enqueue_bulk_jobs_s"] = sum(map(len, concurrent)) / (time.perf_counter() - t)

        async with start_daemon(
            ["--role", "worker", "--set", "log.level=info", "--set", "redis.command_timeout_s=60"],
            env=env,
        ) as worker:
            pid = worker.process.pid
            spy = None
            if py_spy:
                # Sample the worker during the drain only (--format raw: collapsed stacks).
                spy = await trio.lowlevel.open_process(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "500",
                        "--gil",
                        "--format",
                        "raw",
                        "--output",
                        py_spy,
                    ]
                )
                await trio.sleep(1.0)
            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            redis_cpu0 = cpu_seconds(redis_pid)
            redis_info_cpu0 = await redis_cpu_seconds(redis)
            await redis.execute(b"CONFIG", b"RESETSTAT")
            await broker.control.resume()
            # Polling the counts costs the worker nothing, unlike 20k watchers.
            # Drained: nothing waiting or running (with retention by count,
            # completed jobs beyond --keep are gone, so they cannot be counted).
            while True:
                counts = await broker.control.counts()
                if counts[JobStatus.WAITING] == counts[JobStatus.ACTIVE] == 0:
                    break
                await trio.sleep(0.02)
            if counts[JobStatus.COMPLETED] != min(keep or jobs, jobs):
                raise SystemExit(f"drained, but not every job completed: {counts}")
            wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
            redis_info_cpu = await redis_cpu_seconds(redis) - redis_info_cpu0
            redis_proc_cpu = cpu_seconds(redis_pid) - redis_cpu0
            stats = info_fields(await redis.execute(b"INFO", b"commandstats"))
            results["drain_jobs_s"] = jobs / wall
            results["worker_cpu_us_per_job"] = cpu / jobs * 1e6
            # Redis shares this machine's cores: its share bounds the drain too.
            results["redis_cpu_us_per_job"] = redis_info_cpu / jobs * 1e6
            results["redis_proc_cpu_us_per_job"] = redis_proc_cpu / jobs * 1e6
            results["worker_rss_mb"] = rss_mb(pid)
            # Where Redis spends its time: the commands run inside scripts count
            # both on their own lines and in their script's EVALSHA line.
            calls = 0
            for key, fields in stats.items():
                if key.startswith("cmdstat_"):
                    values = dict(part.split("=") for part in fields.split(","))
                    calls += int(values["calls"])
                    usec_per_job = int(values["usec"]) / jobs
                    if usec_per_job >= 0.05:
                        print(
                            f"   redis {key[8:]:12} {int(values['calls']) / jobs:8.2f} calls/job "
                            f"{usec_per_job:8.2f} us/job",
                            file=sys.stderr,
                        )
            results["redis_commands_per_job"] = calls / jobs
            # Batching as the worker saw it: its own counters.
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"{worker.health}/metrics")).text
            flushes = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("flowqd_worker_flushes_total")
            )
            results["jobs_per_flush_jobs"] = jobs / max(flushes, 1)
            if spy is not None:
                spy.send_signal(2)
                await spy.wait()
        nursery.cancel_scope.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000, help="jobs per bulk enqueue call")
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        help="sample the worker with py-spy during the drain (collapsed stacks, GIL held)",
    )
    parser.add_argument(
        "--replicas", type=int, default=0, help="replica redis-servers beside the primary"
    )
    parser.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        help="redis.wait_replicas for the bench and the worker (starts that many replicas)",
    )
    parser.add_argument(
        "--priorities",
        type=int,
        default=0,
        help="give the jobs N priorities, interleaved (0: none, the FIFO list)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=50,
        help="worker.concurrency (the drain target is read at 50; the worker's default is 10000)",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=10000,
        help="queue.remove_on_count (default: the daemon's own); 0 keeps every job,"
        " so no record is deleted during the drain",
    )
    args = parser.parse_args()
    server = RedisServer()
    server.start()
    replicas = start_replicas(server, max(args.replicas, args.wait_replicas))
    extra = {
        "FLOWQD_REDIS__WAIT_REPLICAS": str(args.wait_replicas),
        "FLOWQD_WORKER__CONCURRENCY": str(args.concurrency),
    }
    try:
        results = trio.run(
            bench,
            server.url,
            server.proc.pid,
            args.jobs,
            args.batch,
            args.py_spy,
            extra,
            args.priorities,
            args.keep,
        )
    finally:
        for replica in replicas:
            replica.close()
        server.close()
    print(f"{'figure':28} {'value':>12}")
    units = {
        "_jobs_s": "jobs/s",
        "_us_per_job": "us/job",
        "_commands_per_job": "commands/job",
        "_mb": "MB",
        "_jobs": "jobs",
    }
    for name, value in results.items():
        unit = next(u for suffix, u in units.items() if name.endswith(suffix))
        print(f"{name:28} {value:12,.1f} {unit}")
    for name, value in results.items():
        unit = next(u for suffix, u in units.items() if name.endswith(suffix))
        emit(name, value, unit)


if __name__ == "__main__":
    main()

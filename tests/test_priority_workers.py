"""Priorities across several real worker processes sharing one Redis queue.

The workers are up and the queue paused while the jobs go in, so every job
waits when claiming begins: then no job may start before a waiting job of a
higher priority, and within one priority they start in the order they came.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import trio

from flowqd.jobs import Job, JobSpec, JobStatus
from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer
from tests.test_worker_processes import open_client, worker_args, worker_id

pytestmark = pytest.mark.slow

PRIORITIES = (5, 0, -5)
PER_PRIORITY = 12


async def test_three_worker_processes_claim_by_priority_fifo_within_one(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    # 4 slots each: the 36 jobs take three rounds of claims, spread over the workers.
    args = worker_args("--set", "worker.concurrency=4")
    with trio.fail_after(90):
        async with open_client(redis_server.url, queue_name) as client:
            await client.broker.control.pause()
            async with (
                start_daemon(args, env=env, cwd=str(tmp_path)) as w1,
                start_daemon(args, env=env, cwd=str(tmp_path)) as w2,
                start_daemon(args, env=env, cwd=str(tmp_path)) as w3,
            ):
                version = await client.flows.current_version("wait")
                assert version is not None
                # Interleaved: -5, 0, 5, -5, 0, 5, ... so arrival order alone would mix them.
                specs = [
                    JobSpec("wait", version, {"question": f"q{n}"}, priority=p)
                    for n in range(PER_PRIORITY)
                    for p in reversed(PRIORITIES)
                ]
                ids = await client.broker.jobs.enqueue(specs)
                await client.broker.control.resume()
                jobs = [await client.finished(job_id) for job_id in ids]
                workers = {worker_id(w) for w in (w1, w2, w3)}
    assert all(j.status == JobStatus.COMPLETED for j in jobs), jobs
    assert len({j.worker for j in jobs}) >= 2 and {j.worker for j in jobs} <= workers
    by_priority: dict[int, list[Job]] = {p: [] for p in PRIORITIES}
    for job in jobs:  # in enqueue order
        by_priority[job.priority].append(job)
    started = {p: [j.started_at or 0.0 for j in group] for p, group in by_priority.items()}
    for higher, lower in itertools.pairwise(PRIORITIES):
        assert max(started[higher]) <= min(started[lower]), (higher, lower, started)
    for stamps in started.values():
        assert stamps == sorted(stamps)  # FIFO within one priority

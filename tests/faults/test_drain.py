"""SIGTERM to a worker under load: it stops claiming, finishes what fits in its
grace, puts the rest back with the attempt not counted, exits 0; another worker
then runs what was put back.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from flowqd.jobs import JobStatus
from tests.daemonproc import start_daemon
from tests.faults.helpers import (
    assert_no_crash,
    delay_flow,
    gather,
    open_observer,
    redis_env,
    settings,
    terminal_count,
    worker_id,
)
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

GRACE_S = 2.0
FITS = delay_flow("fits", 800)  # ends within the grace
LONG = delay_flow("long", 5000)  # cannot
CONCURRENCY = 20


async def test_sigterm_drains_finishes_what_fits_requeues_the_rest_uncounted(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = redis_env(redis_server.url, queue_name)
    worker = [
        "--role",
        "worker",
        *settings(
            worker__concurrency=CONCURRENCY,
            worker__shutdown_grace_s=GRACE_S,
            worker__lock_ttl_s=2,
            worker__stalled_interval_s=0.5,
        ),
    ]
    with trio.fail_after(60):
        async with open_observer(redis_server.url, queue_name) as observer:
            await observer.put_flows([FITS, LONG])
            async with start_daemon(worker, env=env, cwd=str(tmp_path)) as first:
                first_id = worker_id(first)
                fits = await observer.enqueue("fits", CONCURRENCY // 2, prefix="f")
                long = await observer.enqueue("long", CONCURRENCY // 2, prefix="l")
                await gather(lambda i: observer.wait_event(i, "node_start"), fits + long)
                # The worker is full; these wait. Once the short jobs end it has
                # free slots, and a draining worker must leave these alone.
                queued = await observer.enqueue("fits", 30, prefix="w")
                first.signal(signal.SIGTERM)
                await first.wait_for_log("draining")
                assert await first.wait(GRACE_S + 10) == 0, first.text()[-3000:]
            assert "stopped cleanly" in first.text()
            ended = await gather(observer.broker.jobs.get_job, fits)
            requeued = await gather(observer.broker.jobs.get_job, long)
            untouched = await gather(observer.broker.jobs.get_job, queued)
            assert all(j is not None and j.status == JobStatus.COMPLETED for j in ended)
            assert all(j is not None and j.worker == first_id and j.attempts == 1 for j in ended)
            assert all(j is not None and j.status == JobStatus.WAITING for j in requeued)
            assert all(j is not None and j.attempts == 0 for j in requeued)  # not counted
            assert all(
                j is not None and j.status == JobStatus.WAITING and j.attempts == 0
                for j in untouched
            )  # never claimed while draining
            async with start_daemon(worker, env=env, cwd=str(tmp_path)) as second:
                second_id = worker_id(second)
                rescued = await observer.all_finished(long + queued)
                assert_no_crash(second)
            events = await gather(observer.events, long)
    assert all(j.status == JobStatus.COMPLETED and j.worker == second_id for j in rescued)
    assert all(j.attempts == 1 for j in rescued)
    assert [j.result for j in rescued[: len(long)]] == [f"l{i}" for i in range(len(long))]
    for job_events in events:
        names = [e.name for e in job_events]
        assert terminal_count(job_events) == 1, names
        assert names.count("started") == 2, names  # once on each worker
    print(
        f"\ndrain: {len(fits)} finished within the {GRACE_S:g}s grace, {len(long)} requeued "
        f"(attempts 0) and finished on the second worker, {len(queued)} waiting jobs never "
        "claimed by the draining worker; exit code 0"
    )

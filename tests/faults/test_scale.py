"""10,000 concurrent ``delay`` jobs in one worker with a short lock TTL: no false stalls.

BullMQ users report "missing lock" errors and jobs stalled under load: the
lock renewal timer starves while the event loop is busy. Here one worker runs
10,000 jobs at once, each longer than the lock TTL (3 s against 2 s), so every
job lives through at least one renewal; a renewal that came late would show
as a second attempt, a second ``started`` event or a ``stalled`` failure.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

from flowqd.jobs import JobStatus
from tests.daemonproc import start_daemon
from tests.faults.helpers import (
    assert_no_crash,
    count_in,
    delay_flow,
    gather,
    open_observer,
    poll,
    redis_env,
    settings,
)
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

JOBS = 10_000
DELAY_MS = 3000
LOCK_TTL_S = 2.0


async def test_10000_concurrent_jobs_in_one_worker_no_false_stalls(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = redis_env(redis_server.url, queue_name)
    worker = [
        "--role",
        "worker",
        *settings(
            worker__lock_ttl_s=LOCK_TTL_S,
            worker__stalled_interval_s=0.5,
            queue__remove_on_count=2 * JOBS,
        ),
    ]
    with trio.fail_after(120):
        async with open_observer(redis_server.url, queue_name) as observer:
            await observer.put_flows([delay_flow("wait", DELAY_MS)])
            async with start_daemon(worker, env=env, cwd=str(tmp_path)) as daemon:
                started = time.monotonic()
                ids = await observer.enqueue("wait", JOBS)
                peak = 0

                async def all_done() -> bool:
                    nonlocal peak
                    counts = await observer.broker.control.counts()
                    peak = max(peak, counts[JobStatus.ACTIVE])
                    return counts[JobStatus.COMPLETED] + counts[JobStatus.FAILED] >= JOBS

                await poll(all_done, every=0.2)
                elapsed = time.monotonic() - started
                assert_no_crash(daemon)
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(15) == 0
            jobs = await gather(observer.broker.jobs.get_job, ids, at_once=200)
            events = await gather(observer.events, ids, at_once=200)
            failed = await count_in(observer, JobStatus.FAILED)
    attempts = Counter(j.attempts if j is not None else None for j in jobs)
    starts = Counter(sum(e.name == "started" for e in job_events) for job_events in events)
    lost = daemon.text().count("lock lost")
    print(
        f"\n{JOBS} x {DELAY_MS / 1000:g}s delay jobs in one worker, lock ttl {LOCK_TTL_S:g}s: "
        f"all done in {elapsed:.1f}s, peak {peak} active at once; attempts {dict(attempts)}, "
        f"started events per job {dict(starts)}, failed {failed}, 'lock lost' {lost}"
    )
    assert failed == 0
    assert all(j is not None and j.status == JobStatus.COMPLETED for j in jobs)
    assert attempts == {1: JOBS}  # 0 false stalls
    assert starts == {1: JOBS}
    assert lost == 0
    # Concurrent, not one after another: all of them ran in a few delays' time.
    assert peak >= JOBS // 2

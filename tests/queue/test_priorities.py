"""Priorities, delays and progress on both backends (memory, Redis, Redis Cluster).

Priorities: higher is claimed first, FIFO within one, 0 is the plain list;
every path that puts a job back in line (requeue, stalled check, retry with
backoff, JobStore.retry, promote) keeps its priority.
"""

from __future__ import annotations

import time

import trio
import trio.testing

from flowqd.jobs import EmittedEvent, JobStatus, Outcome, OutcomeKind
from flowqd.queue import Broker
from tests.queue.conftest import BrokerFactory
from tests.queue.helpers import claim_one, done, failed, spec, wait_until


async def _claim_all(broker: Broker, batch: int) -> list[str]:
    ids: list[str] = []
    while got := await broker.work.claim("w1", batch, lock_ttl_s=30, block_s=0):
        ids += [c.job.id for c in got]
    return ids


async def test_higher_priority_first_fifo_within_one(broker: Broker) -> None:
    with trio.fail_after(10):
        plan = [("a", 0), ("b", 5), ("c", -3), ("d", 5), ("e", 0), ("f", 1000), ("g", -1)]
        ids = await broker.jobs.enqueue(
            [spec(n, job_id=name, priority=p) for n, (name, p) in enumerate(plan)]
        )
        assert ids == [name for name, _ in plan]
        order = ["f", "b", "d", "a", "e", "g", "c"]
        assert (await broker.control.counts())[JobStatus.WAITING] == 7
        assert await broker.control.waiting_by_priority() == {
            "positive": 3,
            "zero": 2,
            "negative": 2,
        }
        # The waiting list shows the line reversed: last to be claimed first.
        listed = await broker.jobs.list_jobs(JobStatus.WAITING, limit=100)
        assert [j.id for j in listed] == order[::-1]
        assert [j.priority for j in listed] == [-3, -1, 0, 0, 5, 5, 1000]
        paged = [
            j.id
            for offset in range(0, 7, 3)
            for j in await broker.jobs.list_jobs(JobStatus.WAITING, offset=offset, limit=3)
        ]
        assert paged == order[::-1]
        # In small batches (a batch may span the sets), then the same in one batch.
        assert await _claim_all(broker, 2) == order
        assert await broker.control.waiting_by_priority() == {
            "positive": 0,
            "zero": 0,
            "negative": 0,
        }
        await broker.jobs.enqueue(
            [spec(n, job_id=f"{name}2", priority=p) for n, (name, p) in enumerate(plan)]
        )
        assert await _claim_all(broker, 100) == [f"{name}2" for name in order]


async def test_a_later_higher_priority_job_overtakes_the_waiting_ones(broker: Broker) -> None:
    with trio.fail_after(10):
        await broker.jobs.enqueue([spec(i, job_id=f"plain{i}") for i in range(3)])
        await broker.jobs.enqueue([spec(job_id="low", priority=-5)])
        assert (await claim_one(broker)).job.id == "plain0"
        await broker.jobs.enqueue([spec(job_id="urgent", priority=1)])
        assert await _claim_all(broker, 10) == ["urgent", "plain1", "plain2", "low"]


async def test_requeue_keeps_priority_and_place(broker: Broker) -> None:
    with trio.fail_after(10):
        await broker.jobs.enqueue(
            [spec(job_id=i, priority=p) for i, p in (("x", 5), ("y", 5), ("z", 0), ("n", -2))]
        )
        first = await claim_one(broker)
        assert first.job.id == "x" and first.job.priority == 5
        assert await broker.work.flush([], [Outcome("x", first.token, OutcomeKind.REQUEUE)]) == [
            True
        ]
        job = await broker.jobs.get_job("x")
        assert job is not None and job.status == JobStatus.WAITING and job.priority == 5
        # Back ahead of y (it has waited longest), and a low one back behind the list.
        got = await broker.work.claim("w1", 4, lock_ttl_s=30, block_s=0)
        assert [c.job.id for c in got] == ["x", "y", "z", "n"]
        low = got[3]
        assert await broker.work.flush([], [Outcome("n", low.token, OutcomeKind.REQUEUE)]) == [True]
        await broker.jobs.enqueue([spec(job_id="later", priority=-2), spec(job_id="plain")])
        assert await _claim_all(broker, 10) == ["plain", "n", "later"]


async def test_stalled_job_comes_back_with_its_priority(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_stalled=3, stalled_interval_s=0.1) as broker:
            await broker.jobs.enqueue([spec(job_id="hi", priority=3)])
            await claim_one(broker, lock_ttl_s=0.2)
            await broker.jobs.enqueue([spec(job_id="plain"), spec(job_id="hi2", priority=3)])

            async def back() -> bool:
                job = await broker.jobs.get_job("hi")
                return job is not None and job.status == JobStatus.WAITING

            await wait_until(back)
            assert await _claim_all(broker, 10) == ["hi", "hi2", "plain"]


async def test_retries_keep_priority(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_attempts=2, backoff_s=0.1) as broker:
            await broker.jobs.enqueue([spec(job_id="hi", priority=7)])
            # Fails, retried with backoff (delayed, then promoted): still first.
            await broker.work.flush([], [failed(await claim_one(broker))])
            await broker.jobs.enqueue([spec(job_id="plain1")])

            async def waiting(job_id: str) -> bool:
                job = await broker.jobs.get_job(job_id)
                return job is not None and job.status == JobStatus.WAITING

            await wait_until(lambda: waiting("hi"))
            got = await broker.work.claim("w1", 2, lock_ttl_s=30, block_s=0)
            assert [(c.job.id, c.job.attempts) for c in got] == [("hi", 2), ("plain1", 1)]
            await broker.work.flush([], [failed(got[0]), done(got[1])])
            # Out of attempts: failed. A retry through the API keeps the priority too.
            job = await broker.jobs.get_job("hi")
            assert job is not None and job.status == JobStatus.FAILED
            await broker.jobs.enqueue([spec(job_id="plain2")])
            retried = await broker.jobs.retry("hi")
            assert retried is not None and retried.status == JobStatus.WAITING
            assert retried.priority == 7
            assert await _claim_all(broker, 10) == ["hi", "plain2"]


async def test_cancel_delete_and_promote_of_prioritised_jobs(broker: Broker) -> None:
    with trio.fail_after(10):
        await broker.jobs.enqueue(
            [
                spec(job_id="gone", priority=9),
                spec(job_id="deleted", priority=-9),
                spec(job_id="later", priority=4, delay_s=3600),
                spec(job_id="plain"),
            ]
        )
        cancelled = await broker.jobs.cancel("gone", reason="no")
        assert cancelled is not None and cancelled.status == JobStatus.CANCELLED
        assert await broker.jobs.delete_job("deleted") == JobStatus.WAITING
        assert (await broker.control.counts())[JobStatus.WAITING] == 1
        promoted = await broker.jobs.promote("later")
        assert promoted is not None and promoted.status == JobStatus.WAITING
        assert promoted.priority == 4
        assert await _claim_all(broker, 10) == ["later", "plain"]
        # A cancelled prioritised job retried goes back in line once, not twice.
        assert (await broker.jobs.retry("gone")) is not None
        assert await _claim_all(broker, 10) == ["gone"]


async def test_delayed_job_runs_no_earlier_than_asked(broker: Broker) -> None:
    # Real time on every backend: the job's started_at (wall clock) is checked
    # against the time it was asked for.
    with trio.fail_after(10):
        asked_at = time.time()
        [job_id] = await broker.jobs.enqueue([spec(delay_s=0.4, priority=2)])
        assert (await broker.jobs.get_job(job_id)).status == JobStatus.DELAYED  # type: ignore[union-attr]
        claimed = await claim_one(broker)
        assert claimed.job.id == job_id
        assert claimed.job.started_at is not None
        assert claimed.job.started_at >= asked_at + 0.4 - 0.002  # ms rounding of the stamps


async def test_progress_is_kept_on_the_job(broker: Broker) -> None:
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        assert claimed.job.progress is None
        await broker.work.flush(
            [
                EmittedEvent(job_id, "progress", 0.25),
                EmittedEvent(job_id, "token", "a"),
                EmittedEvent(job_id, "progress", {"done": 4, "of": 10}),
            ],
            [],
        )
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.progress == {"done": 4, "of": 10}
        events = await broker.jobs.read_events(job_id)
        assert [e.name for e in events] == ["progress", "token", "progress"]
        await broker.work.flush(
            [EmittedEvent(job_id, "progress", 1)], [failed(claimed, retry=False)]
        )
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.status == JobStatus.FAILED and job.progress == 1
        # A late report of a job that has ended changes nothing.
        await broker.work.flush([EmittedEvent(job_id, "progress", 0.5)], [])
        assert (await broker.jobs.get_job(job_id)).progress == 1  # type: ignore[union-attr]
        # A new run starts without the old run's progress.
        retried = await broker.jobs.retry(job_id)
        assert retried is not None and retried.progress is None

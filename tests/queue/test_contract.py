"""The broker contract, run against both backends (memory and Redis) through their roles.

Every test is bounded by ``trio.fail_after``; waits are on broker events
(claims, watched events), never sleeps standing in for synchronisation.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from flowqd.jobs import (
    EmittedEvent,
    JobSpec,
    JobStatus,
    Outcome,
    OutcomeKind,
    WorkerInfo,
    parse_event_id,
)
from flowqd.queue import Broker, JobIdTaken
from tests.queue.conftest import BrokerFactory
from tests.queue.helpers import (
    claim_one,
    done,
    failed,
    spec,
    terminal,
    wait_terminal,
    wait_until,
    watch_events,
)


async def test_enqueue_claim_complete(broker: Broker) -> None:
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec(7, owner="k1", timeout_s=12.5)])
        job = await broker.jobs.get_job(job_id)
        assert job is not None
        assert job.status == JobStatus.WAITING and job.attempts == 0 and job.max_attempts == 1
        assert job.created_at > 1e9 and job.owner == "k1" and job.timeout_s == 12.5

        [claimed] = await broker.work.claim("w1", 10, lock_ttl_s=30, block_s=1)
        assert claimed.job.id == job_id and claimed.job.inputs == {"n": 7}
        assert claimed.job.status == JobStatus.ACTIVE and claimed.job.attempts == 1
        assert claimed.job.worker == "w1" and claimed.job.started_at is not None
        assert claimed.job.flow_id == "f" and claimed.job.flow_version == 1

        assert (
            await broker.work.flush(
                [EmittedEvent(job_id, "token", "a"), EmittedEvent(job_id, "token", "b")], []
            )
            == []
        )
        outcome = Outcome(
            job_id,
            claimed.token,
            OutcomeKind.COMPLETED,
            result={"text": "ab"},
            nodes=[{"id": "n1", "status": "FINISHED"}],
        )
        assert await broker.work.flush([EmittedEvent(job_id, "node", {"id": "n1"})], [outcome]) == [
            True
        ]

        events = await broker.jobs.read_events(job_id)
        assert [(e.name, e.data) for e in events] == [
            ("token", "a"),
            ("token", "b"),
            ("node", {"id": "n1"}),
            ("end", {"text": "ab"}),
        ]
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.status == JobStatus.COMPLETED
        assert job.result == {"text": "ab"} and job.nodes == [{"id": "n1", "status": "FINISHED"}]
        assert job.finished_at is not None and job.finished_at >= job.created_at
        # Nothing is appended after the terminal event, and the outcome is not recorded twice.
        assert await broker.work.flush([EmittedEvent(job_id, "late", 1)], [done(claimed)]) == [
            False
        ]
        assert await broker.jobs.read_events(job_id) == events


async def test_bulk_enqueue_is_fifo(broker: Broker) -> None:
    with trio.fail_after(10):
        ids = await broker.jobs.enqueue([spec(i) for i in range(50)])
        assert len(set(ids)) == 50
        assert (await broker.control.counts())[JobStatus.WAITING] == 50
        first = await broker.work.claim("w1", 20, lock_ttl_s=30, block_s=0)
        assert [c.job.id for c in first] == ids[:20]
        assert len({c.token for c in first}) == 20
        rest = await broker.work.claim("w1", 100, lock_ttl_s=30, block_s=0)
        assert [c.job.id for c in rest] == ids[20:]
        counts = await broker.control.counts()
        assert counts[JobStatus.WAITING] == 0 and counts[JobStatus.ACTIVE] == 50
        outcomes = [done(c, c.job.inputs["n"]) for c in first + rest]
        assert await broker.work.flush([], outcomes) == [True] * 50
        assert (await broker.control.counts())[JobStatus.COMPLETED] == 50


async def test_trace_context_travels_with_the_job(broker: Broker) -> None:
    traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\nvendor=a b,other=c"
    with trio.fail_after(10):
        # Mixed in one call: the per-job arguments stay aligned whether a job has one or not.
        ids = await broker.jobs.enqueue(
            [spec(1), spec(2, trace=traced, owner="k"), spec(3, delay_s=0.0)]
        )
        stored = [await broker.jobs.get_job(i) for i in ids]
        assert [(j.trace, j.inputs, j.owner) for j in stored if j is not None] == [
            (None, {"n": 1}, None),
            (traced, {"n": 2}, "k"),
            (None, {"n": 3}, None),
        ]
        claimed = await broker.work.claim("w1", 3, lock_ttl_s=30, block_s=1)
        assert [c.job.trace for c in claimed] == [None, traced, None]


async def test_inputs_of_any_characters_reach_the_worker_intact(broker: Broker) -> None:
    """NULs, every control character and non-ASCII text in the inputs and the
    owner reach the worker as sent: on a job's first claim (whose record the
    Redis claim passes back joined by NULs) and after a requeue (as pairs)."""
    text = "".join(map(chr, range(32))) + "\x7f é ✓ \U0001f600 \\0"
    inputs = {"q": text, text: [text, {"k": text}], "n": 1}
    with trio.fail_after(10):
        [plain, owned] = await broker.jobs.enqueue(
            [JobSpec("f", 1, inputs), JobSpec("f", 1, inputs, owner=text)]
        )
        first = await broker.work.claim("w1", 2, lock_ttl_s=30, block_s=1)
        assert [(c.job.id, c.job.inputs, c.job.owner) for c in first] == [
            (plain, inputs, None),
            (owned, inputs, text),
        ]
        requeue = [Outcome(c.job.id, c.token, OutcomeKind.REQUEUE) for c in first]
        assert await broker.work.flush([], requeue) == [True, True]
        again = await broker.work.claim("w1", 2, lock_ttl_s=30, block_s=1)
        assert sorted((c.job.id, c.job.inputs == inputs, c.job.owner) for c in again) == sorted(
            [(plain, True, None), (owned, True, text)]
        )


async def test_duplicate_job_id_makes_one_job(broker: Broker) -> None:
    with trio.fail_after(10):
        ids = await broker.jobs.enqueue([spec(1, job_id="dup"), spec(2, job_id="dup")])
        assert ids == ["dup", "dup"]
        assert await broker.jobs.enqueue([spec(3, job_id="dup")]) == ["dup"]
        assert (await broker.control.counts())[JobStatus.WAITING] == 1
        claimed = await claim_one(broker)
        assert claimed.job.inputs == {"n": 1}
        await broker.work.flush([], [done(claimed)])
        assert await broker.jobs.enqueue([spec(4, job_id="dup")]) == ["dup"]
        job = await broker.jobs.get_job("dup")
        assert job is not None and job.status == JobStatus.COMPLETED
        assert await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=0) == []


async def test_job_id_of_another_owner_refuses_the_whole_call(broker: Broker) -> None:
    with trio.fail_after(10):
        assert await broker.jobs.enqueue([spec(1, job_id="mine", owner="alice")]) == ["mine"]
        # The same owner again: idempotent, as before.
        assert await broker.jobs.enqueue([spec(2, job_id="mine", owner="alice")]) == ["mine"]
        for owner in ("bob", None):
            with pytest.raises(JobIdTaken) as taken:
                await broker.jobs.enqueue(
                    [spec(3, job_id="fresh", owner=owner), spec(4, job_id="mine", owner=owner)]
                )
            assert taken.value.positions == [1]
        # Nothing of a refused call was added, and the first job is untouched.
        assert await broker.jobs.get_job("fresh") is None
        assert (await broker.control.counts())[JobStatus.WAITING] == 1
        claimed = await claim_one(broker)
        assert claimed.job.inputs == {"n": 1} and claimed.job.owner == "alice"
        # Jobs without an owner (no API keys) share one: a resend is idempotent.
        assert await broker.jobs.enqueue([spec(5, job_id="open")]) == ["open"]
        assert await broker.jobs.enqueue([spec(6, job_id="open")]) == ["open"]
        with pytest.raises(JobIdTaken):
            await broker.jobs.enqueue([spec(7, job_id="open", owner="alice")])


async def test_watch_with_a_cursor_past_the_stream_still_ends(broker: Broker) -> None:
    # A Last-Event-ID made up or from elsewhere, ahead of every id the stream
    # will get: the watch still ends with the terminal event, whether it
    # began before the stream existed, while the job ran, or after it ended.
    far = f"{2**64 - 1}-{2**64 - 1}"
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        ends: list[str] = []
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                names = [e.name async for e in watch_events(broker.jobs, job_id, after=far)]
                ends.append(names[-1])

            nursery.start_soon(watch)
            claimed = await claim_one(broker)
            await broker.work.flush([EmittedEvent(job_id, "token", 0)], [])
            nursery.start_soon(watch)
            await broker.work.flush([EmittedEvent(job_id, "token", 1)], [done(claimed, "r")])
        assert ends == ["end", "end"]
        after_the_end = [e async for e in watch_events(broker.jobs, job_id, after=far)]
        assert [(e.name, e.data) for e in after_the_end] == [("end", "r")]


async def test_malformed_or_huge_event_ids_are_value_errors(broker: Broker) -> None:
    [job_id] = await broker.jobs.enqueue([spec()])
    for bad in ("x", "1-", "-1", "²", f"{2**64}-0", f"0-{2**64}", "9" * 5000):
        with pytest.raises(ValueError):
            broker.jobs.open_event_watch(job_id, after=bad)
        with pytest.raises(ValueError):
            await broker.jobs.read_events(job_id, after=bad)


async def test_delayed_job(broker: Broker, clock: trio.testing.MockClock | None) -> None:
    with trio.fail_after(10):
        start = trio.current_time()
        [job_id] = await broker.jobs.enqueue([spec(delay_s=0.3)])
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.status == JobStatus.DELAYED
        assert (await broker.control.counts())[JobStatus.DELAYED] == 1
        assert await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=0) == []
        claimed = await claim_one(broker)
        assert claimed.job.id == job_id
        assert trio.current_time() - start >= 0.3


async def test_retry_with_backoff_then_success(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_attempts=3, backoff_s=0.2) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            first = await claim_one(broker)
            failed_at = trio.current_time()
            assert await broker.work.flush([], [failed(first)]) == [True]
            job = await broker.jobs.get_job(job_id)
            assert job is not None and job.status == JobStatus.DELAYED
            assert job.error is not None and job.error["message"] == "boom"
            assert terminal(await broker.jobs.read_events(job_id)) == []

            second = await claim_one(broker)
            assert trio.current_time() - failed_at >= 0.2
            assert second.job.attempts == 2 and second.token != first.token
            assert await broker.work.flush([], [done(second, "ok")]) == [True]
            events = await broker.jobs.read_events(job_id)
            assert [(e.name, e.data) for e in terminal(events)] == [("end", "ok")]


async def test_backoff_doubles(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(20):
        async with open_test_broker(max_attempts=3, backoff_s=0.25) as broker:
            await broker.jobs.enqueue([spec()])
            await broker.work.flush([], [failed(await claim_one(broker))])
            second = await claim_one(broker)
            failed_at = trio.current_time()
            await broker.work.flush([], [failed(second)])
            third = await claim_one(broker)
            assert third.job.attempts == 3
            assert trio.current_time() - failed_at >= 0.5


async def test_attempts_exhausted_fails_with_error_event(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_attempts=2) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            await broker.work.flush([], [failed(await claim_one(broker), "first")])
            second = failed(await claim_one(broker), "second")
            assert await broker.work.flush([], [second]) == [True]
            job = await broker.jobs.get_job(job_id)
            assert job is not None and job.status == JobStatus.FAILED and job.attempts == 2
            assert job.error == {"message": "second", "node": "n1", "traceback": "tb"}
            events = await broker.jobs.read_events(job_id)
            assert [(e.name, e.data) for e in events] == [
                ("error", {"message": "second", "node": "n1"})
            ]
            assert (await broker.control.counts())[JobStatus.FAILED] == 1
            assert [j.id for j in await broker.jobs.list_jobs(JobStatus.FAILED)] == [job_id]


async def test_failure_without_retry_is_final(open_test_broker: BrokerFactory) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_attempts=5) as broker:
            [job_id] = await broker.jobs.enqueue([spec(max_attempts=5)])
            await broker.work.flush([], [failed(await claim_one(broker), retry=False)])
            job = await broker.jobs.get_job(job_id)
            assert job is not None and job.status == JobStatus.FAILED and job.attempts == 1


async def test_cancel_queued_and_delayed(broker: Broker) -> None:
    with trio.fail_after(10):
        a, b, c = await broker.jobs.enqueue([spec(1), spec(2), spec(3, delay_s=0.05)])
        for job_id in (a, c):
            job = await broker.jobs.cancel(job_id, reason="user")
            assert job is not None and job.status == JobStatus.CANCELLED and job.cancel_requested
            events = await broker.jobs.read_events(job_id)
            assert [(e.name, e.data) for e in events] == [("cancelled", {"reason": "user"})]
        assert (await claim_one(broker)).job.id == b
        # Neither cancelled job comes back, even after the delay has passed.
        assert await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=0.3) == []
        counts = await broker.control.counts()
        assert counts[JobStatus.CANCELLED] == 2 and counts[JobStatus.DELAYED] == 0
        # Cancelling a finished job changes nothing.
        again = await broker.jobs.cancel(a)
        assert again is not None and again.status == JobStatus.CANCELLED
        assert len(await broker.jobs.read_events(a)) == 1
        assert await broker.jobs.cancel("nope") is None


async def test_cancel_active(broker: Broker) -> None:
    with trio.fail_after(10):
        notices: list[str] = []
        noticed = trio.Event()

        def on_cancel(job_id: str) -> None:
            notices.append(job_id)
            noticed.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: broker.work.watch_cancels(on_cancel, task_status=task_status)
            )
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            job = await broker.jobs.cancel(job_id, reason="stop")
            assert job is not None and job.status == JobStatus.ACTIVE and job.cancel_requested
            await noticed.wait()
            assert notices == [job_id]
            assert await broker.work.renew("w1", {job_id: claimed.token}, lock_ttl_s=30) == (
                set(),
                {job_id},
            )
            outcome = Outcome(job_id, claimed.token, OutcomeKind.CANCELLED)
            assert await broker.work.flush([], [outcome]) == [True]
            nursery.cancel_scope.cancel()
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.status == JobStatus.CANCELLED
        assert job.error is not None and job.error["reason"] == "stop"
        events = await broker.jobs.read_events(job_id)
        assert [(e.name, e.data) for e in events] == [("cancelled", {"reason": "stop"})]


async def test_cancelled_running_job_never_runs_again(broker: Broker) -> None:
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        await broker.jobs.cancel(job_id)
        # The worker tries to put it back (shutdown drain) or to retry a failure.
        requeue = Outcome(job_id, claimed.token, OutcomeKind.REQUEUE)
        assert await broker.work.flush([], [requeue]) == [True]
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.status == JobStatus.CANCELLED
        assert len(terminal(await broker.jobs.read_events(job_id))) == 1
        assert await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=0) == []


async def test_cancelled_failure_is_not_retried(open_test_broker: BrokerFactory) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_attempts=3) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            await broker.jobs.cancel(job_id)
            assert await broker.work.flush([], [failed(claimed)]) == [True]
            job = await broker.jobs.get_job(job_id)
            assert job is not None and job.status == JobStatus.FAILED
            assert len(terminal(await broker.jobs.read_events(job_id))) == 1


async def test_stale_token_refused(broker: Broker) -> None:
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        stale = Outcome(job_id, "not-the-token", OutcomeKind.COMPLETED, result=1)
        assert await broker.work.flush([], [stale, done(claimed, 2)]) == [False, True]
        assert await broker.work.flush([], [done(claimed, 3)]) == [False]
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.result == 2
        assert len(terminal(await broker.jobs.read_events(job_id))) == 1
        assert await broker.work.renew("w1", {job_id: claimed.token}, lock_ttl_s=30) == (
            {job_id},
            set(),
        )


async def test_expired_lock_puts_job_back(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_stalled=1, stalled_interval_s=0.1) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            first = await claim_one(broker, "w1", lock_ttl_s=0.2)
            # w1 stops renewing; the stalled check hands the job to w2.
            second = await claim_one(broker, "w2", lock_ttl_s=30)
            assert second.job.id == job_id and second.job.attempts == 2
            assert second.job.worker == "w2"
            lost = await broker.work.renew("w1", {job_id: first.token}, lock_ttl_s=30)
            assert lost == ({job_id}, set())
            assert await broker.work.flush([], [done(first, "late")]) == [False]
            assert await broker.work.flush([], [done(second, "ok")]) == [True]
            job = await broker.jobs.get_job(job_id)
            assert job is not None and job.result == "ok"


async def test_renewed_lock_is_kept(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(stalled_interval_s=0.05) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker, lock_ttl_s=0.3)
            for _ in range(8):  # 0.8 s, far past the first lock's end
                assert await broker.work.renew("w1", {job_id: claimed.token}, lock_ttl_s=0.3) == (
                    set(),
                    set(),
                )
                await trio.sleep(0.1)
            assert await broker.work.flush([], [done(claimed)]) == [True]


async def test_max_stalled_fails_job(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_stalled=0, stalled_interval_s=0.1) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            await claim_one(broker, lock_ttl_s=0.2)
            events = await wait_terminal(broker, job_id)
            assert [e.name for e in events] == ["error"]
            assert "stalled" in events[0].data["message"] and events[0].data["node"] is None
            job = await broker.jobs.get_job(job_id)
            assert job is not None and job.status == JobStatus.FAILED
            assert job.error is not None and job.error["reason"] == "stalled"


async def test_a_stalled_jobs_worker_can_add_nothing_to_it_once_it_waits_again(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    # Events go to an active job only: once the stalled check has put it
    # back, its last holder's events and outcome are dropped.
    with trio.fail_after(10):
        async with open_test_broker(max_stalled=5, stalled_interval_s=0.1) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker, lock_ttl_s=0.2)

            async def waiting() -> bool:
                job = await broker.jobs.get_job(job_id)
                return job is not None and job.status == JobStatus.WAITING

            await wait_until(waiting)
            late = [EmittedEvent(job_id, "late", 1)]
            assert await broker.work.flush(late, []) == []
            assert await broker.work.flush(late, [done(claimed)]) == [False]
            assert await broker.jobs.read_events(job_id) == []
            again = await claim_one(broker)
            assert again.job.id == job_id and again.job.attempts == 2


async def test_stalled_cancelled_job_ends_cancelled(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_stalled=5, stalled_interval_s=0.1) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            await claim_one(broker, lock_ttl_s=0.2)
            await broker.jobs.cancel(job_id, reason="gone")
            events = await wait_terminal(broker, job_id)
            assert [(e.name, e.data) for e in events] == [("cancelled", {"reason": "gone"})]


async def test_stalled_check_logs_each_job_it_takes_back(
    open_test_broker: BrokerFactory,
    clock: trio.testing.MockClock | None,
    caplog: pytest.LogCaptureFixture,
    queue_name: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowqd.queue")

    def stalled() -> list[tuple[str, str, str]]:
        return [
            (r.__dict__["job_id"], r.__dict__["stalled"], r.__dict__["queue"])
            for r in caplog.records
            if r.name == "flowqd.queue" and "stalled" in r.__dict__
        ]

    async def logged(count: int) -> bool:
        await trio.lowlevel.checkpoint()
        return len(stalled()) >= count

    with trio.fail_after(10):
        async with open_test_broker(max_stalled=1, stalled_interval_s=0.1) as broker:
            [twice, cancelled] = await broker.jobs.enqueue([spec(1), spec(2)])
            await claim_one(broker, lock_ttl_s=0.2)
            await claim_one(broker, lock_ttl_s=0.2)
            await broker.jobs.cancel(cancelled, reason="gone")
            await wait_until(lambda: logged(2))
            # Requeued once; its worker dies again: past max_stalled, failed.
            assert (await claim_one(broker, lock_ttl_s=0.2)).job.id == twice
            await wait_until(lambda: logged(3))
    assert stalled() == [
        (twice, "requeued", queue_name),
        (cancelled, "cancelled", queue_name),
        (twice, "failed", queue_name),
    ]


async def test_requeue_does_not_count_attempt(broker: Broker) -> None:
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        requeue = Outcome(job_id, claimed.token, OutcomeKind.REQUEUE)
        assert await broker.work.flush([], [requeue]) == [True]
        job = await broker.jobs.get_job(job_id)
        assert job is not None and job.status == JobStatus.WAITING and job.attempts == 0
        assert await broker.jobs.read_events(job_id) == []
        again = await claim_one(broker)
        assert again.job.id == job_id and again.job.attempts == 1


async def test_events_flushed_with_an_outcome_come_before_it_whatever_it_is(
    open_test_broker: BrokerFactory,
) -> None:
    # Redis sends a finishing job's events inside its outcome (codec._held):
    # every outcome, taken or refused, must treat them as separate events.
    def two(job_id: str) -> list[EmittedEvent]:
        return [EmittedEvent(job_id, "started", {"n": 1}), EmittedEvent(job_id, "node", "a")]

    async def names(job_id: str) -> list[str]:
        return [e.name for e in await broker.jobs.read_events(job_id)]

    with trio.fail_after(10):
        async with open_test_broker(max_attempts=2) as broker:
            for kind, status, last in (
                (OutcomeKind.COMPLETED, JobStatus.COMPLETED, ["end"]),
                (OutcomeKind.FAILED, JobStatus.FAILED, ["error"]),
                (OutcomeKind.CANCELLED, JobStatus.CANCELLED, ["cancelled"]),
                (OutcomeKind.FAILED, JobStatus.DELAYED, []),  # to be retried
                (OutcomeKind.REQUEUE, JobStatus.WAITING, []),
            ):
                [job_id] = await broker.jobs.enqueue([spec()])
                claimed = await claim_one(broker)
                retry = status == JobStatus.DELAYED
                outcome = Outcome(job_id, claimed.token, kind, error={"message": "m"}, retry=retry)
                assert await broker.work.flush(two(job_id), [outcome]) == [True]
                job = await broker.jobs.get_job(job_id)
                assert job is not None and job.status == status
                events = await broker.jobs.read_events(job_id)
                assert [e.name for e in events] == ["started", "node", *last]
                assert events[0].data == {"n": 1} and events[1].data == "a"
                resumed = await broker.jobs.read_events(job_id, after=events[0].id)
                assert resumed == events[1:]
                if status in (JobStatus.DELAYED, JobStatus.WAITING):
                    await broker.jobs.delete_job(job_id)

            # Refused while another worker holds the job: its events still
            # go on, as events flushed alone would; after the end, none does.
            [job_id] = await broker.jobs.enqueue([spec()])
            claimed = await claim_one(broker)
            stale = Outcome(job_id, "not-the-token", OutcomeKind.COMPLETED, result=0)
            assert await broker.work.flush(two(job_id), [stale]) == [False]
            assert await names(job_id) == ["started", "node"]
            assert await broker.work.flush(two(job_id), [stale, done(claimed, 1)]) == [False, True]
            assert await names(job_id) == ["started", "node"] * 2 + ["end"]
            assert await broker.work.flush(two(job_id), [done(claimed, 2)]) == [False]
            assert await names(job_id) == ["started", "node"] * 2 + ["end"]


async def test_pause_and_resume(broker: Broker) -> None:
    with trio.fail_after(10):
        assert not await broker.control.is_paused()
        await broker.control.pause()
        assert await broker.control.is_paused()
        [job_id] = await broker.jobs.enqueue([spec()])
        assert await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=0) == []
        got: list[str] = []
        async with trio.open_nursery() as nursery:

            async def claimer() -> None:
                got.append((await claim_one(broker)).job.id)

            nursery.start_soon(claimer)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert got == []
            await broker.control.resume()
        assert got == [job_id]
        assert not await broker.control.is_paused()


async def test_counts_and_list_jobs(broker: Broker) -> None:
    with trio.fail_after(10):
        ids = await broker.jobs.enqueue([spec(i) for i in range(6)])
        await broker.jobs.enqueue([spec(9, delay_s=60)])
        a, b, c = await broker.work.claim("w1", 3, lock_ttl_s=30, block_s=0)
        await broker.work.flush([], [done(a), failed(b, retry=False)])
        await broker.jobs.cancel(ids[3])
        assert await broker.control.counts() == {
            JobStatus.WAITING: 2,
            JobStatus.DELAYED: 1,
            JobStatus.ACTIVE: 1,
            JobStatus.COMPLETED: 1,
            JobStatus.FAILED: 1,
            JobStatus.CANCELLED: 1,
        }
        assert [j.id for j in await broker.jobs.list_jobs(JobStatus.WAITING)] == [ids[5], ids[4]]
        page = await broker.jobs.list_jobs(JobStatus.WAITING, offset=1, limit=1)
        assert [j.id for j in page] == [ids[4]]
        assert [j.id for j in await broker.jobs.list_jobs(JobStatus.ACTIVE)] == [c.job.id]
        assert [j.id for j in await broker.jobs.list_jobs(JobStatus.COMPLETED)] == [a.job.id]
        delayed = await broker.jobs.list_jobs(JobStatus.DELAYED)
        assert [j.status for j in delayed] == [JobStatus.DELAYED]


async def test_retention_by_count(open_test_broker: BrokerFactory) -> None:
    with trio.fail_after(10):
        async with open_test_broker(remove_on_count=2) as broker:
            ids = await broker.jobs.enqueue([spec(i) for i in range(4)])
            for job_id in ids:
                claimed = await claim_one(broker)
                assert claimed.job.id == job_id
                await broker.work.flush([EmittedEvent(job_id, "x", 1)], [done(claimed)])
            assert (await broker.control.counts())[JobStatus.COMPLETED] == 2
            for old in ids[:2]:
                assert await broker.jobs.get_job(old) is None
                assert await broker.jobs.read_events(old) == []
            for kept in ids[2:]:
                assert await broker.jobs.get_job(kept) is not None
                assert len(await broker.jobs.read_events(kept)) == 2
            assert [j.id for j in await broker.jobs.list_jobs(JobStatus.COMPLETED)] == ids[:1:-1]


async def test_retention_by_age(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(20):
        async with open_test_broker(remove_on_age_s=0.3, stalled_interval_s=0.1) as broker:
            [job_id, kept] = await broker.jobs.enqueue([spec(1), spec(2)])
            claimed = await claim_one(broker)
            await broker.work.flush([EmittedEvent(job_id, "x", 1)], [done(claimed)])

            async def gone() -> bool:
                counts = await broker.control.counts()
                return await broker.jobs.get_job(job_id) is None and not counts[JobStatus.COMPLETED]

            await wait_until(gone, 0.05)
            assert await broker.jobs.read_events(job_id) == []
            assert await broker.jobs.list_jobs(JobStatus.COMPLETED) == []
            assert await broker.jobs.get_job(kept) is not None  # unfinished jobs never expire


async def test_watch_events_live(broker: Broker) -> None:
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        seen: list[tuple[str, object]] = []
        async with trio.open_nursery() as nursery:

            async def watcher() -> None:
                async for event in watch_events(broker.jobs, job_id):
                    seen.append((event.name, event.data))

            nursery.start_soon(watcher)
            claimed = await claim_one(broker)
            for i in range(3):
                await broker.work.flush([EmittedEvent(job_id, "token", i)], [])
            await broker.work.flush([], [done(claimed, "r")])
        assert seen == [("token", 0), ("token", 1), ("token", 2), ("end", "r")]


async def test_watch_events_replay_and_resume(broker: Broker) -> None:
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        await broker.work.flush([EmittedEvent(job_id, "token", i) for i in range(5)], [])
        await broker.work.flush([], [done(claimed, "r")])
        events = await wait_terminal(broker, job_id)
        assert [e.name for e in events] == ["token"] * 5 + ["end"]
        assert [e.id for e in events] == [e.id for e in await broker.jobs.read_events(job_id)]
        resumed = [e async for e in watch_events(broker.jobs, job_id, after=events[2].id)]
        assert resumed == events[3:]
        assert await broker.jobs.read_events(job_id, after=events[3].id, count=2) == events[4:6]
        assert await broker.jobs.read_events(job_id, after=events[-1].id) == []


async def test_every_event_of_a_flush_is_a_resume_point(broker: Broker) -> None:
    # Redis keeps what one flush appends for a job in few stream entries
    # (codec.ENTRY_EVENTS events each); every event still has an id of its
    # own, and a read or a watch resumes after any of them, within an entry too.
    with trio.fail_after(30):
        [job_id] = await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        await broker.work.flush([EmittedEvent(job_id, "token", i) for i in range(3)], [])
        await broker.work.flush(
            [EmittedEvent(job_id, "token", i) for i in range(3, 40)], [done(claimed, "r")]
        )
        events = await broker.jobs.read_events(job_id)
        assert [(e.name, e.data) for e in events] == [
            *(("token", i) for i in range(40)),
            ("end", "r"),
        ]
        keys = [parse_event_id(e.id) for e in events]
        assert keys == sorted(set(keys))
        for n, event in enumerate(events):
            assert await broker.jobs.read_events(job_id, after=event.id) == events[n + 1 :]
            assert (
                await broker.jobs.read_events(job_id, after=event.id, count=2)
                == (events[n + 1 : n + 3])
            )
            if n + 1 < len(events):
                resumed = [e async for e in watch_events(broker.jobs, job_id, after=event.id)]
                assert resumed == events[n + 1 :]


async def test_watch_event_batches_deliver_a_flush_together(broker: Broker) -> None:
    # What one flush wrote reaches a caught-up watcher as one batch (one write
    # to an SSE client), the terminal event last; nothing after it is read.
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        await broker.work.flush([EmittedEvent(job_id, "token", "first")], [])
        batches: list[list[tuple[str, object]]] = []
        async with trio.open_nursery() as nursery:
            first_seen = trio.Event()

            async def watcher() -> None:
                async with broker.jobs.open_event_watch(job_id) as watch:
                    async for batch in watch:
                        batches.append([(e.name, e.data) for e in batch])
                        first_seen.set()

            nursery.start_soon(watcher)
            await first_seen.wait()
            await broker.work.flush(
                [EmittedEvent(job_id, "token", i) for i in range(300)], [done(claimed, "r")]
            )
        assert batches[0] == [("token", "first")]
        later = [event for batch in batches[1:] for event in batch]
        assert later == [("token", i) for i in range(300)] + [("end", "r")]
        # Batches are bounded (a watcher's buffer) but not one event each.
        assert 2 <= len(batches) <= 4
        assert all(batch for batch in batches)


async def test_many_watchers_of_many_jobs(broker: Broker) -> None:
    with trio.fail_after(20):
        ids = await broker.jobs.enqueue([spec(i) for i in range(5)])
        claimed = await broker.work.claim("w1", 5, lock_ttl_s=30, block_s=1)
        results: dict[tuple[str, int], list[object]] = {}
        async with trio.open_nursery() as nursery:
            for job_id in ids:
                for n in range(20):

                    async def watcher(job_id: str = job_id, n: int = n) -> None:
                        results[job_id, n] = [
                            e.data async for e in watch_events(broker.jobs, job_id)
                        ]

                    nursery.start_soon(watcher)
            for i in range(10):
                await broker.work.flush([EmittedEvent(j, "t", i) for j in ids], [])
            await broker.work.flush([], [done(c, "end") for c in claimed])
        assert len(results) == 100
        assert [d for d in results.values() if d != [*range(10), "end"]] == []


async def test_heartbeat_and_workers(broker: Broker, clock: trio.testing.MockClock | None) -> None:
    with trio.fail_after(10):
        info = WorkerInfo(
            id="w1",
            host="h",
            pid=1,
            started_at=1.0,
            last_seen=2.0,
            jobs_held=3,
            concurrency=10,
            ready=True,
        )
        await broker.work.heartbeat(info, ttl_s=0.3)
        await broker.work.heartbeat(WorkerInfo("w2", "h", 2, 1.0, 2.0, 0, 5, False), ttl_s=30)
        assert sorted(w.id for w in await broker.control.workers()) == ["w1", "w2"]
        assert info in await broker.control.workers()
        await trio.sleep(0.5)  # past w1's ttl: the scenario, not synchronisation
        assert [w.id for w in await broker.control.workers()] == ["w2"]


async def test_flows_versions(broker: Broker) -> None:
    with trio.fail_after(10):
        assert await broker.flow_documents.get_flow("greet") is None
        assert await broker.flow_documents.put_flow("greet", b'{"v": 1}') == 1
        assert await broker.flow_documents.put_flow("greet", b'{"v": 1}') == 1
        assert await broker.flow_documents.put_flow("greet", b'{"v": 2}') == 2
        assert await broker.flow_documents.put_flow("other", b"{}") == 1
        assert await broker.flow_documents.get_flow("greet") == (2, b'{"v": 2}')
        assert await broker.flow_documents.get_flow("greet", 1) == (1, b'{"v": 1}')
        assert await broker.flow_documents.get_flow("greet", 3) is None
        assert await broker.flow_documents.list_flows() == {"greet": 2, "other": 1}
        assert await broker.flow_documents.delete_flow("greet")
        assert not await broker.flow_documents.delete_flow("greet")
        assert await broker.flow_documents.get_flow("greet") is None
        # Queued jobs still run it.
        assert await broker.flow_documents.get_flow("greet", 2) == (2, b'{"v": 2}')
        assert await broker.flow_documents.put_flow("greet", b'{"v": 1}') == 3
        assert await broker.flow_documents.list_flows() == {"greet": 3, "other": 1}


async def test_secrets(broker: Broker) -> None:
    with trio.fail_after(10):
        assert await broker.secrets.get_secret("openai") is None
        await broker.secrets.put_secret("openai", b"\x00sealed\xff")
        await broker.secrets.put_secret("other", b"x")
        assert await broker.secrets.get_secret("openai") == b"\x00sealed\xff"
        assert sorted(await broker.secrets.list_secrets()) == ["openai", "other"]
        assert await broker.secrets.delete_secret("openai")
        assert not await broker.secrets.delete_secret("openai")
        assert await broker.secrets.list_secrets() == ["other"]


async def test_rate_limit_allows_a_burst_then_says_how_long_to_wait(broker: Broker) -> None:
    with trio.fail_after(10):
        # 60 a minute (one a second), bursts of 3: three go, the fourth waits
        # about a second; another limit's name is counted apart.
        for _ in range(3):
            assert await broker.limiter.rate_limit("flow:a", per_minute=60, burst=3) == 0
        wait = await broker.limiter.rate_limit("flow:a", per_minute=60, burst=3)
        assert 0.5 < wait <= 1.0
        # A refused request is not counted: asking again waits no longer.
        assert await broker.limiter.rate_limit("flow:a", per_minute=60, burst=3) <= wait
        assert await broker.limiter.rate_limit("flow:b", per_minute=60, burst=3) == 0


async def test_rate_limit_refills_with_time(broker: Broker) -> None:
    with trio.fail_after(10):
        # 6000 a minute is one per 10 ms: after a refused request, waiting the
        # answer lets the next one through.
        assert await broker.limiter.rate_limit("r", per_minute=6000, burst=1) == 0
        wait = await broker.limiter.rate_limit("r", per_minute=6000, burst=1)
        assert 0 < wait <= 0.01
        await trio.sleep(wait + 0.002)
        assert await broker.limiter.rate_limit("r", per_minute=6000, burst=1) == 0


async def test_retry_of_failed_job_keeps_attempts_and_history(broker: Broker) -> None:
    # The terminal rule: each run to an end writes exactly one terminal event;
    # a retry appends "retried" right after it; once the job has ended again,
    # the stream's last entry is the current run's terminal event.
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec()])
        first = await claim_one(broker)
        await broker.work.flush(
            [EmittedEvent(job_id, "started", {"attempt": 1})], [failed(first, retry=False)]
        )
        job = await broker.jobs.retry(job_id)
        assert job is not None and job.status == JobStatus.WAITING and job.attempts == 1
        assert job.max_attempts == 2  # every attempt was used: one more is allowed
        assert job.error is None and job.finished_at is None
        kept = await broker.jobs.read_events(job_id)
        assert [(e.name, e.data) for e in kept] == [
            ("started", {"attempt": 1}),
            ("error", {"message": "boom", "node": "n1"}),
            ("retried", {"attempt": 2}),
        ]
        assert (await broker.control.counts())[JobStatus.FAILED] == 0
        claimed = await claim_one(broker)
        assert claimed.job.id == job_id and claimed.job.attempts == 2
        await broker.work.flush(
            [EmittedEvent(job_id, "started", {"attempt": 2})], [done(claimed, "second time")]
        )
        # A late client replaying from the start sees both runs, through the last one's end.
        names = [e.name for e in await wait_terminal(broker, job_id)]
        assert names == ["started", "error", "retried", "started", "end"]
        events = await broker.jobs.read_events(job_id)
        assert len(terminal(events)) == 2 and events[-1].name == "end"
        assert events[events.index(terminal(events)[0]) + 1].name == "retried"
        # Resuming after the first run's terminal event goes on to the second run.
        after_error = [e.name async for e in watch_events(broker.jobs, job_id, after=events[1].id)]
        assert after_error == ["retried", "started", "end"]
        completed = await broker.jobs.retry(job_id)  # not failed or cancelled: unchanged
        assert completed is not None and completed.status == JobStatus.COMPLETED
        assert completed.attempts == 2
        assert await broker.jobs.retry("nope") is None


async def test_retry_of_cancelled_job_keeps_its_attempt_budget(broker: Broker) -> None:
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue([spec(max_attempts=3)])
        await broker.jobs.cancel(job_id, reason="oops")
        job = await broker.jobs.retry(job_id)
        assert job is not None and (job.attempts, job.max_attempts) == (0, 3)
        assert job.cancel_requested is False
        watched = []
        async with broker.jobs.open_event_watch(job_id) as batches:
            claimed = await claim_one(broker)
            assert claimed.job.attempts == 1
            await broker.work.flush([], [done(claimed)])
            async for batch in batches:
                watched += [e.name for e in batch]
        assert watched == ["cancelled", "retried", "end"]


async def test_retry_failed_in_bounded_batches_oldest_first(broker: Broker) -> None:
    with trio.fail_after(10):
        ids = await broker.jobs.enqueue([spec(n) for n in range(5)])
        for _ in ids:
            await broker.work.flush([], [failed(await claim_one(broker), retry=False)])
        [ok] = await broker.jobs.enqueue([spec(9)])
        await broker.work.flush([], [done(await claim_one(broker))])
        assert await broker.control.retry_failed(2) == 2
        counts = await broker.control.counts()
        assert counts[JobStatus.FAILED] == 3 and counts[JobStatus.WAITING] == 2
        assert await broker.control.retry_failed(10) == 3
        assert await broker.control.retry_failed(10) == 0
        # Oldest failure first, and each run of them back in the wait list.
        claimed = [(await claim_one(broker)).job for _ in ids]
        assert [j.id for j in claimed] == ids and {j.attempts for j in claimed} == {2}
        events = await broker.jobs.read_events(ids[0])
        assert [e.name for e in events] == ["error", "retried"]
        assert (await broker.jobs.get_job(ok)).status == JobStatus.COMPLETED  # type: ignore[union-attr]


async def test_clean_finished_jobs_by_state_and_age(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(20):
        async with open_test_broker() as broker:
            old = await broker.jobs.enqueue([spec(n) for n in range(3)])
            for _ in old:
                await broker.work.flush([], [done(await claim_one(broker))])
            await trio.sleep(0.5)
            [new, bad] = await broker.jobs.enqueue([spec(5), spec(6)])
            await broker.work.flush([], [done(await claim_one(broker))])
            await broker.work.flush([], [failed(await claim_one(broker), retry=False)])
            with pytest.raises(ValueError, match="only finished jobs"):
                await broker.control.clean(JobStatus.ACTIVE, older_than_s=None, limit=10)
            # Older than 0.3 s: the first three only, two per call.
            assert await broker.control.clean(JobStatus.COMPLETED, older_than_s=0.3, limit=2) == 2
            assert await broker.control.clean(JobStatus.COMPLETED, older_than_s=0.3, limit=2) == 1
            assert await broker.control.clean(JobStatus.COMPLETED, older_than_s=0.3, limit=2) == 0
            for job_id in old:
                assert await broker.jobs.get_job(job_id) is None
                assert await broker.jobs.read_events(job_id) == []
            assert await broker.jobs.get_job(new) is not None
            counts = await broker.control.counts()
            assert counts[JobStatus.COMPLETED] == 1 and counts[JobStatus.FAILED] == 1
            assert await broker.control.clean(JobStatus.COMPLETED, older_than_s=None, limit=9) == 1
            assert await broker.jobs.get_job(new) is None
            assert (await broker.jobs.get_job(bad)).status == JobStatus.FAILED  # type: ignore[union-attr]


async def test_delete_job_in_each_state(broker: Broker) -> None:
    with trio.fail_after(10):
        finished, delayed, running, queued = await broker.jobs.enqueue(
            [spec(0), spec(1, delay_s=60), spec(2), spec(3)]
        )
        first, active = await claim_one(broker), await claim_one(broker)
        assert (first.job.id, active.job.id) == (finished, running)
        await broker.work.flush([EmittedEvent(finished, "x", 1)], [done(first)])
        assert await broker.jobs.delete_job(running) == JobStatus.ACTIVE  # refused
        assert (await broker.jobs.get_job(running)).status == JobStatus.ACTIVE  # type: ignore[union-attr]
        assert await broker.jobs.delete_job(finished) == JobStatus.COMPLETED
        assert await broker.jobs.get_job(finished) is None
        assert await broker.jobs.read_events(finished) == []
        assert await broker.jobs.delete_job(delayed) == JobStatus.DELAYED
        assert await broker.jobs.delete_job(queued) == JobStatus.WAITING
        assert await broker.jobs.delete_job(queued) is None
        counts = await broker.control.counts()
        assert counts == {**dict.fromkeys(JobStatus, 0), JobStatus.ACTIVE: 1}
        # The active one still ends normally; nothing else is left to claim.
        await broker.work.flush([], [done(active)])
        assert await broker.work.claim("w1", 5, lock_ttl_s=5, block_s=0.05) == []


async def test_a_retry_right_after_a_full_page_of_events_is_followed(broker: Broker) -> None:
    # The Redis reader reads 256 entries at a time: here the first run's terminal
    # event is the 256th, so the page ends on it and "retried" lies past it.
    with trio.fail_after(20):
        [job_id] = await broker.jobs.enqueue([spec()])
        noise = [EmittedEvent(job_id, "token", n) for n in range(255)]
        await broker.work.flush(noise, [failed(await claim_one(broker), retry=False)])
        await broker.jobs.retry(job_id)
        await broker.work.flush([], [done(await claim_one(broker))])
        names = [e.name for e in await wait_terminal(broker, job_id)]
        assert len(names) == 258 and names[255:] == ["error", "retried", "end"]


async def test_promote_a_delayed_job(broker: Broker) -> None:
    with trio.fail_after(10):
        [later, now] = await broker.jobs.enqueue([spec(0, delay_s=3600), spec(1)])
        job = await broker.jobs.promote(later)
        assert job is not None and job.status == JobStatus.WAITING
        assert (await broker.control.counts())[JobStatus.DELAYED] == 0
        unchanged = await broker.jobs.promote(now)  # waiting already
        assert unchanged is not None and unchanged.status == JobStatus.WAITING
        assert await broker.jobs.promote("nope") is None
        claimed = {(await claim_one(broker)).job.id for _ in range(2)}
        assert claimed == {later, now}


async def test_unknown_job(broker: Broker) -> None:
    with trio.fail_after(10):
        assert await broker.jobs.get_job("nope") is None
        assert await broker.jobs.read_events("nope") == []
        assert await broker.work.flush(
            [EmittedEvent("nope", "x", 1)], [Outcome("nope", "t", OutcomeKind.COMPLETED)]
        ) == [False]
        assert await broker.work.renew("w1", {"nope": "t"}, lock_ttl_s=1) == ({"nope"}, set())


async def test_ping(broker: Broker) -> None:
    with trio.fail_after(10):
        await broker.ping()


async def test_a_claimed_job_is_its_record_as_read_back(broker: Broker) -> None:
    # The claim's reply is decoded apart from get_job's: both give the same Job,
    # fresh, after a retried failure (error, nodes, progress) and after a requeue.
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with trio.fail_after(10):
        [job_id] = await broker.jobs.enqueue(
            [spec(1, owner="k1", timeout_s=2.5, trace=trace, priority=3, max_attempts=3)]
        )
        first = await claim_one(broker)
        assert first.job == await broker.jobs.get_job(job_id)
        assert first.job.status == JobStatus.ACTIVE and first.job.worker == "w1"

        nodes = [{"id": "n1", "status": "error"}]
        progress = EmittedEvent(job_id, "progress", {"done": 1})
        failure = Outcome(
            job_id, first.token, OutcomeKind.FAILED, error={"message": "boom"}, nodes=nodes
        )
        assert await broker.work.flush([progress], [failure]) == [True]
        await broker.jobs.promote(job_id)
        second = await claim_one(broker, "w2")
        assert second.job == await broker.jobs.get_job(job_id)
        assert second.job.attempts == 2 and second.job.worker == "w2"
        assert second.job.error is not None and second.job.nodes == nodes
        assert second.job.progress == {"done": 1}

        requeue = Outcome(job_id, second.token, OutcomeKind.REQUEUE, nodes=nodes)
        assert await broker.work.flush([], [requeue]) == [True]
        third = await claim_one(broker)
        assert third.job == await broker.jobs.get_job(job_id)
        assert third.job.attempts == 2 and third.job.nodes == nodes

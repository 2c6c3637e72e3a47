"""Small helpers shared by the broker tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from flowqd.jobs import TERMINAL_EVENTS, Claimed, Event, JobSpec, Outcome, OutcomeKind
from flowqd.queue import Broker
from flowqd.queue.roles import JobStore


def spec(n: int = 0, **kw: Any) -> JobSpec:
    return JobSpec(flow_id="f", flow_version=1, inputs={"n": n}, **kw)


async def claim_one(broker: Broker, worker: str = "w1", *, lock_ttl_s: float = 30.0) -> Claimed:
    """Block until one job is claimed (the test's fail_after bounds it)."""
    while True:
        got = await broker.work.claim(worker, 1, lock_ttl_s=lock_ttl_s, block_s=1.0)
        if got:
            return got[0]


def done(claimed: Claimed, result: Any = None) -> Outcome:
    return Outcome(claimed.job.id, claimed.token, OutcomeKind.COMPLETED, result=result)


def failed(claimed: Claimed, message: str = "boom", *, retry: bool = True) -> Outcome:
    return Outcome(
        claimed.job.id,
        claimed.token,
        OutcomeKind.FAILED,
        error={"message": message, "node": "n1", "traceback": "tb"},
        retry=retry,
    )


def terminal(events: list[Event]) -> list[Event]:
    return [e for e in events if e.name in TERMINAL_EVENTS]


async def wait_terminal(broker: Broker, job_id: str) -> list[Event]:
    """Every event of the job up to and including its terminal one."""
    return [e async for e in watch_events(broker.jobs, job_id)]


async def watch_events(jobs: JobStore, job_id: str, *, after: str = "0") -> AsyncIterator[Event]:
    """``open_event_watch`` one event at a time."""
    async with jobs.open_event_watch(job_id, after=after) as batches:
        async for batch in batches:
            for event in batch:
                yield event


async def wait_until(check: Callable[[], Awaitable[bool]], interval: float = 0.01) -> None:
    """Poll state that no trio.Event can signal (Redis, time-based expiry).

    The caller's fail_after bounds it.
    """
    while not await check():  # noqa: ASYNC110
        await trio.sleep(interval)

"""What every route needs: the daemon's components, the caller, deadlines on the broker."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, cast

import attrs
import trio
from quart import g

from flowqd.api.http import ApiError, broker_deadline
from flowqd.api.metrics import ApiMetrics
from flowqd.auth import KeyRing, Principal
from flowqd.jobs import Event, Job
from flowqd.queue.base import Broker

if TYPE_CHECKING:
    from flowqd.api.app import ApiState


# On every answer that concerns one job (each prediction's, streamed or not,
# from the moment its job exists): a client cut off mid-answer can find its job.
JOB_ID_HEADER = "X-Flowqd-Job-Id"


@attrs.define(eq=False)
class ApiContext:
    state: ApiState
    keys: KeyRing
    metrics: ApiMetrics
    nursery: trio.Nursery | None = None  # the app's, set at start-up

    @contextmanager
    def broker(self, what: str) -> Iterator[None]:
        """One bounded exchange with the broker (503 past ``server.broker_timeout_s``)."""
        with broker_deadline(self.state.config.server.broker_timeout_s, what):
            yield

    async def check_rate(self, flow_id: str) -> None:
        """429 with Retry-After when ``flow_id`` is past its ``[limits]`` pace."""
        limits = self.state.config.limits
        per_minute = limits.for_flow(flow_id)
        if per_minute == 0:
            return
        with self.broker("checking the rate limit"):
            wait = await self.state.broker.rate_limit(
                f"flow:{flow_id}", per_minute=per_minute, burst=limits.burst
            )
        if wait > 0:
            self.metrics.rate_limited.inc(flow=flow_id)
            raise ApiError(
                429,
                f"flow {flow_id} takes at most {per_minute} requests a minute (bursts of "
                f"{limits.burst}); retry in {wait:.1f}s, or raise limits.flows / "
                "limits.per_minute",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def background(self) -> trio.Nursery:
        if self.nursery is None:
            raise ApiError(503, "the server is starting or stopping; try again",
                           headers={"Retry-After": "1"})
        return self.nursery

    async def visible_job(self, job_id: str) -> Job:
        """The job if it exists and the caller may see it; 404 otherwise (never 403:
        another key's jobs are not even confirmed to exist)."""
        with self.broker("reading the job"):
            job = await self.state.broker.get_job(job_id)
        if job is None or not principal().may_see(job.owner):
            raise ApiError(404, f"job {job_id} not found (unknown, removed by retention after "
                                "queue.remove_on_age_s, or created with another API key)")
        return job


def principal() -> Principal:
    """The caller of the current request, set by the app's authentication hook."""
    return cast(Principal, g.principal)


def require_admin(what: str) -> None:
    if not principal().admin:
        raise ApiError(403, f"{what} needs an admin API key (one added with "
                            "`flowqd keys add NAME --admin`)")


@asynccontextmanager
async def watching(broker: Broker, job_id: str, after: str = "0"
                   ) -> AsyncIterator[AsyncIterator[list[Event]]]:
    """``broker.watch_event_batches`` closed on the way out, whatever ended the wait."""
    batches = broker.watch_event_batches(job_id, after=after)
    try:
        yield batches
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()

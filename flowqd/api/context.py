"""What the API's handlers share: the queue roles, the stores, the config, the caller.

One ``ApiContext`` per app, reached from a handler through ``context()``.
It holds only the roles of the queue the API uses (``JobStore``,
``QueueControl``, ``RateLimiter``, ``Conversations``), never the whole broker.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import cast

import attrs
import trio
from quart import Quart, current_app, g

from flowqd.api.assets import Asset, load_assets
from flowqd.api.http import ApiError, broker_deadline
from flowqd.api.metrics import ApiMetrics
from flowqd.api.throughput import FinishRate
from flowqd.auth import KeyRing, Principal
from flowqd.config import Config
from flowqd.credentials import CredentialStore
from flowqd.errors import FlowValidationError
from flowqd.flows import CompiledFlow, FlowStore
from flowqd.jobs import Job
from flowqd.metrics import Registry
from flowqd.queue.roles import Conversations, JobStore, QueueControl, RateLimiter, Schedules

__all__ = ["JOB_ID_HEADER", "ApiContext", "context", "principal", "require_admin"]

# On every answer that concerns one job (each prediction's, streamed or not,
# from the moment its job exists): a client cut off mid-answer can find its job.
JOB_ID_HEADER = "X-Flowqd-Job-Id"
EXTENSION = "flowqd"


@attrs.define(eq=False)
class ApiContext:
    """The app's parts. ``keys`` defaults to the ones config.auth names (reading
    auth.keys_file), and the dashboard's files are read when it is enabled: both
    raise ConfigError here, at start-up, when unusable."""

    config: Config
    jobs: JobStore
    control: QueueControl
    limiter: RateLimiter
    flows: FlowStore
    credentials: CredentialStore
    registry: Registry
    conversations: Conversations  # the chat-message routes'
    # Set when the daemon begins to stop: event streams end, waiters answer.
    shutdown: trio.Event = attrs.Factory(trio.Event)
    schedules: Schedules | None = None  # None: the schedule routes answer 404
    keys: KeyRing = attrs.Factory(lambda self: KeyRing.from_config(self.config), takes_self=True)
    metrics: ApiMetrics = attrs.field(
        init=False, default=attrs.Factory(lambda self: ApiMetrics(self.registry), takes_self=True)
    )
    finish_rate: FinishRate = attrs.field(
        init=False, default=attrs.Factory(lambda self: FinishRate(self.jobs), takes_self=True)
    )
    assets: Mapping[str, Asset] = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: load_assets() if self.config.dashboard.enabled else {}, takes_self=True
        ),
    )
    nursery: trio.Nursery | None = attrs.field(init=False, default=None)  # the app's, once serving

    @contextmanager
    def deadline(self, what: str) -> Iterator[None]:
        """One bounded exchange with the broker (503 past ``server.broker_timeout_s``)."""
        with broker_deadline(self.config.server.broker_timeout_s, what):
            yield

    async def check_rate(self, flow_id: str) -> None:
        """429 with Retry-After when ``flow_id`` is past its ``[limits]`` pace."""
        limits = self.config.limits
        per_minute = limits.for_flow(flow_id)
        if per_minute == 0:
            return
        with self.deadline("checking the rate limit"):
            wait = await self.limiter.rate_limit(
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
            raise ApiError(
                503, "the server is starting or stopping; try again", headers={"Retry-After": "1"}
            )
        return self.nursery

    async def visible_job(self, job_id: str) -> Job:
        """The job if it exists and the caller may see it; 404 otherwise (never 403:
        another key's jobs are not even confirmed to exist)."""
        with self.deadline("reading the job"):
            job = await self.jobs.get_job(job_id)
        if job is None or not principal().may_see(job.owner):
            raise ApiError(
                404,
                f"job {job_id} not found (unknown, removed by retention after "
                "queue.remove_on_age_s, or created with another API key)",
            )
        return job

    async def runnable_flow(self, flow_id: str) -> CompiledFlow:
        """The flow's current version, to run a job of; 404 unknown, 409 no longer valid."""
        try:
            with self.deadline("looking up the flow"):
                flow = await self.flows.get(flow_id)
        except FlowValidationError as exc:
            raise ApiError(
                409,
                f"flow {flow_id!r} is stored but no longer valid (a node "
                f"type's plugin removed?): {exc}; register it again with PUT",
                problems=[{"path": p, "message": m} for p, m in exc.problems],
            ) from None
        if flow is None:
            raise ApiError(
                404,
                f"Chatflow {flow_id} not found: register it with "
                f"PUT /api/v1/flows/{flow_id} (GET /api/v1/flows lists flows)",
            )
        return flow

    def install(self, app: Quart) -> None:
        """Make this the context ``context()`` returns in ``app``'s requests."""
        app.extensions[EXTENSION] = self


def context() -> ApiContext:
    """The current app's context (inside a request, or the app's start and stop)."""
    return cast(ApiContext, current_app.extensions[EXTENSION])


def principal() -> Principal:
    """The caller of the current request, set by the app's authentication hook."""
    return cast(Principal, g.principal)


def require_admin(what: str) -> None:
    if not principal().admin:
        raise ApiError(
            403, f"{what} needs an admin API key (one added with `flowqd keys add NAME --admin`)"
        )

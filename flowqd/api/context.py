"""What the API's handlers share: the queue roles, the stores, the config, the caller.

One ``ApiContext`` per app, reached from a handler through ``context()``.
It holds only the roles the API uses (``JobStore`` and ``QueueControl`` of
each queue, ``RateLimiter``, ``Conversations``), never the whole broker.

Several queues: a flow's jobs go to the queue its document names
(``queue_of``). A job is found by id in the queue a request names
(``?queue=``), else in the default queue first and then in the others, in
``config.queue_names`` order: a default-queue job costs what it did with one
queue, a job of another queue one read more per queue tried before it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

import attrs
import trio
from quart import Quart, current_app, g, request

from flowqd.api.assets import Asset, load_assets
from flowqd.api.http import ApiError, BrokerDeadline
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

__all__ = [
    "JOB_ID_HEADER",
    "ApiContext",
    "Located",
    "QueueRoles",
    "context",
    "principal",
    "require_admin",
]

# On every answer that concerns one job (each prediction's, streamed or not,
# from the moment its job exists): a client cut off mid-answer can find its job.
JOB_ID_HEADER = "X-Flowqd-Job-Id"
EXTENSION = "flowqd"


@attrs.frozen
class QueueRoles:
    """What the API uses of one queue."""

    jobs: JobStore
    control: QueueControl


@attrs.frozen
class Located:
    """A job and the queue it is in."""

    job: Job
    queue: str
    roles: QueueRoles


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
    conversations: Conversations  # the chat-message routes' (the default queue's)
    # The other queues' conversations, by queue name.
    queue_conversations: Mapping[str, Conversations] = attrs.Factory(dict)
    # Every queue by name, the default one (``jobs``, ``control``) first.
    queues: Mapping[str, QueueRoles] = attrs.Factory(
        lambda self: {self.config.queue.name: QueueRoles(self.jobs, self.control)},
        takes_self=True,
    )
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
    _finish_rates: dict[str, FinishRate] = attrs.field(init=False, factory=dict)
    # Enqueues a minute per queue, for the queues that set a limit.
    _queue_limits: dict[str, int] = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: {
                name: limit
                for name in self.config.queue_names
                if (limit := self.config.queue_config(name).per_minute)
            },
            takes_self=True,
        ),
    )

    def deadline(self, what: str) -> BrokerDeadline:
        """One bounded exchange with the broker (503 past ``server.broker_timeout_s``)."""
        return BrokerDeadline(self.config.server.broker_timeout_s, what)

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

    def finish_rate_of(self, queue: str | None) -> FinishRate:
        """The throughput figures of ``queue`` (None: the default queue's)."""
        if queue is None or queue == self.config.queue.name:
            return self.finish_rate
        rate = self._finish_rates.get(queue)
        if rate is None:
            rate = self._finish_rates[queue] = FinishRate(self.queue(queue).jobs)
        return rate

    async def check_queue_rate(self, queue: str) -> None:
        """429 with Retry-After when ``queue`` is past its ``per_minute`` (checked only
        for a queue that sets one: the others cost nothing here)."""
        per_minute = self._queue_limits.get(queue, 0)
        if per_minute == 0:
            return
        burst = self.config.limits.burst
        with self.deadline("checking the rate limit"):
            wait = await self.limiter.rate_limit(
                f"queue:{queue}", per_minute=per_minute, burst=burst
            )
        if wait > 0:
            self.metrics.rate_limited.inc(queue=queue)
            where = (
                "queue.per_minute"
                if queue == self.config.queue.name
                else (f"queues.{queue}.per_minute")
            )
            raise ApiError(
                429,
                f"queue {queue} takes at most {per_minute} jobs a minute (bursts of {burst}); "
                f"retry in {wait:.1f}s, or raise {where}",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def background(self) -> trio.Nursery:
        if self.nursery is None:
            raise ApiError(
                503, "the server is starting or stopping; try again", headers={"Retry-After": "1"}
            )
        return self.nursery

    def queue(self, name: str | None) -> QueueRoles:
        """Queue ``name``'s roles (None: the default queue's); 404 for an unknown name."""
        if name is None:
            return QueueRoles(self.jobs, self.control)
        roles = self.queues.get(name)
        if roles is None:
            raise ApiError(
                404,
                f"queue {name!r} not found; queues: {', '.join(self.queues)} "
                "(GET /api/v1/queues; more are declared with [queues.NAME] in flowqd.toml)",
            )
        return roles

    def queue_arg(self) -> str | None:
        """The request's ``?queue=`` (None when absent or empty); 404 when unknown."""
        name = request.args.get("queue") or None
        if name is not None:
            self.queue(name)
        return name

    def conversations_of(self, flow: CompiledFlow) -> Conversations:
        """The conversations of ``flow``'s queue: its jobs write their turns there."""
        if flow.queue is None:
            return self.conversations
        return self.queue_conversations.get(flow.queue, self.conversations)

    def queue_of(self, flow: CompiledFlow) -> tuple[str, QueueRoles]:
        """The queue ``flow``'s jobs go to; 409 when this process does not serve it
        (the flow was registered by a main whose config declares more queues)."""
        name = flow.queue or self.config.queue.name
        roles = self.queues.get(name)
        if roles is None:
            raise ApiError(
                409,
                f"flow {flow.id!r} sends its jobs to queue {name!r}, which this server's "
                f"config does not declare (queues: {', '.join(self.queues)}): add a "
                f"[queues.{name}] table to its flowqd.toml, or register the flow again "
                "with another queue",
            )
        return name, roles

    async def locate(self, job_id: str, queue: str | None = None) -> Located | None:
        """Job ``job_id`` and its queue: in ``queue`` only when given, else the
        default queue first, then the others (a job id names one job of one queue;
        should two queues hold the id, the first in that order wins)."""
        names = [queue] if queue is not None else list(self.queues)
        for name in names:
            roles = self.queue(name)
            job = await roles.jobs.get_job(job_id)
            if job is not None:
                return Located(job, name, roles)
        return None

    async def visible(self, job_id: str) -> Located:
        """The job (and its queue) if it exists and the caller may see it; 404
        otherwise (never 403: another key's jobs are not even confirmed to exist).
        The request's ``?queue=`` limits the search to that queue."""
        queue = self.queue_arg()
        with self.deadline("reading the job"):
            found = await self.locate(job_id, queue)
        if found is None or not principal().may_see(found.job.owner):
            raise ApiError(
                404,
                f"job {job_id} not found (unknown, removed by retention after "
                "queue.remove_on_age_s, or created with another API key"
                + (f", or not in queue {queue!r})" if queue else ")"),
            )
        return found

    async def visible_job(self, job_id: str) -> Job:
        """``visible``'s job."""
        return (await self.visible(job_id)).job

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

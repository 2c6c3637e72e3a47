"""The broker: one backend's roles in a bundle, for the daemon to hand out.

A backend (``queue/memory``, ``queue/redis``) implements each role of
``roles.py`` in a small class of its own, all sharing one state object.
``open_broker`` bundles them; the daemon gives each part of flowqd only the
roles it uses (the worker ``broker.work``, the API ``broker.jobs`` and
``broker.control``, ...), so nothing else sees the whole bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs
import trio

from flowqd.queue.roles import (
    Conversations,
    FlowDocuments,
    JobStore,
    QueueControl,
    RateLimiter,
    Schedules,
    SealedSecrets,
    WorkQueue,
)


class JobIdTaken(Exception):
    """``enqueue``: a spec's ``job_id`` names an existing job of another owner.

    Nothing of the call was added (the Redis backend checks and adds in one
    script per ``ENQUEUE_CHUNK`` specs). ``positions`` index the refused specs.
    """

    def __init__(self, positions: list[int]) -> None:
        super().__init__(f"job ids taken by another owner at positions {positions}")
        self.positions = positions


class Backend(Protocol):
    """What a backend runs for the whole process, beside its roles."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work (event reader, subscriptions); ``started()`` once usable."""

    async def ping(self) -> None:
        """Return when the backend answers; raise BrokerUnavailable otherwise."""


@attrs.frozen
class Broker:
    """The roles of one backend, and what it runs for the whole process."""

    work: WorkQueue
    jobs: JobStore
    control: QueueControl
    flow_documents: FlowDocuments
    secrets: SealedSecrets
    limiter: RateLimiter
    conversations: Conversations
    schedules: Schedules
    _backend: Backend

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work every process needs (event reader, subscriptions).

        Runs until cancelled; calls ``task_status.started()`` once usable.
        Survives backend outages by reconnecting with backoff.
        """
        await self._backend.run(task_status=task_status)

    async def ping(self) -> None:
        """Return when the backend answers; raise BrokerUnavailable otherwise."""
        await self._backend.ping()


@attrs.frozen
class Brokers:
    """One broker per queue (``[queue]`` and each ``[queues.NAME]``), by queue name.

    The default queue's comes first and also holds what every queue shares:
    flow documents, sealed credentials and rate limits (so a flow is
    registered once, whichever queue its jobs go to). Each queue keeps its
    keys under its own hash tag, ``flowqd:{NAME}:``, so a Redis Cluster
    spreads the queues over its masters.
    """

    by_queue: Mapping[str, Broker]

    @property
    def default(self) -> Broker:
        return next(iter(self.by_queue.values()))

    def __getitem__(self, queue: str) -> Broker:
        return self.by_queue[queue]

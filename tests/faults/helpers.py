"""What the fault scenarios share: flows, daemon arguments, a broker-level observer.

Every scenario runs real ``flowqd`` processes (``tests.daemonproc``) against a
real redis-server. The observer here opens its own broker on the same queue,
so a scenario can check what Redis recorded (outcomes, attempts, events, lock
tokens) without trusting the processes under test.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import orjson
import trio

from flowqd.config import PluginsConfig, RedisConfig, load_config
from flowqd.flows import FlowStore
from flowqd.jobs import TERMINAL_EVENTS, Event, Job, JobSpec, JobStatus
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import Broker, open_broker
from flowqd.queue.keys import QueueKeys
from flowqd.queue.redis.codec import EVENTFUL_MARK
from flowqd.redis import Redis, open_redis
from tests.daemonproc import Daemon

T = TypeVar("T")
R = TypeVar("R")


def delay_flow(flow_id: str, ms: int) -> dict[str, Any]:
    """One ``delay`` node: answers the question after ``ms`` milliseconds."""
    return {
        "id": flow_id,
        "nodes": [{"id": "d", "type": "delay", "params": {"ms": ms}}],
        "output": "d",
    }


ECHO: dict[str, Any] = {"id": "echo", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}


def redis_env(url: str, queue: str) -> dict[str, str]:
    return {"REDIS_URL": url, "QUEUE_NAME": queue}


def write_flows(folder: Path, docs: Iterable[dict[str, Any]]) -> Path:
    """Flow files for a main process's ``flows.paths``."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        (folder / f"{doc['id']}.json").write_bytes(orjson.dumps(doc))
    return folder


def settings(**values: object) -> list[str]:
    """``--set`` arguments: ``settings(worker__lock_ttl_s=1)`` -> ``--set worker.lock_ttl_s=1``."""
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key.replace('__', '.')}={value}"]
    return args


def worker_id(daemon: Daemon) -> str:
    match = re.search(r"worker (\S+) taking jobs", daemon.text())
    assert match, daemon.text()
    return match.group(1)


def assert_no_crash(*daemons: Daemon) -> None:
    """Alive, and no traceback in the log: a bug would show one (executor
    failures are recorded on jobs, not logged with a traceback)."""
    for daemon in daemons:
        assert daemon.process.returncode is None, daemon.text()[-3000:]
        assert "Traceback" not in daemon.text(), daemon.text()[-5000:]


@attrs.define(eq=False)
class Observer:
    """A broker of the test's own on the scenario's queue."""

    broker: Broker
    flows: FlowStore
    redis: Redis
    keys: QueueKeys

    async def put_flows(self, docs: Iterable[dict[str, Any]]) -> None:
        for doc in docs:
            await self.flows.put(doc)

    async def enqueue(self, flow_id: str, n: int, *, prefix: str = "q") -> list[str]:
        version = await self.flows.current_version(flow_id)
        assert version is not None, flow_id
        ids: list[str] = []
        for start in range(0, n, 1000):
            ids += await self.broker.jobs.enqueue(
                [
                    JobSpec(
                        flow_id=flow_id, flow_version=version, inputs={"question": f"{prefix}{i}"}
                    )
                    for i in range(start, min(n, start + 1000))
                ]
            )
        return ids

    async def wait_event(self, job_id: str, name: str) -> Event:
        async with self.broker.jobs.open_event_watch(job_id) as batches:
            async for batch in batches:
                for event in batch:
                    if event.name == name:
                        return event
        raise AssertionError(f"job {job_id} ended without a {name!r} event")

    async def finished(self, job_id: str) -> Job:
        """The job once its terminal event is written."""
        async with self.broker.jobs.open_event_watch(job_id) as batches:
            async for _ in batches:
                pass
        job = await self.broker.jobs.get_job(job_id)
        assert job is not None, job_id
        return job

    async def all_finished(self, ids: Sequence[str], *, at_once: int = 200) -> list[Job]:
        return await gather(self.finished, ids, at_once=at_once)

    async def events(self, job_id: str) -> list[Event]:
        return await self.broker.jobs.read_events(job_id)

    async def token(self, job_id: str) -> str | None:
        """The job's current lock token (what a worker must show to finish it)."""
        raw = await self.redis.execute(b"HGET", self.keys.locks, job_id)
        return None if raw is None else bytes(raw).decode().removesuffix(EVENTFUL_MARK)

    async def in_finished_sets(self, job_id: str) -> list[str]:
        """Which outcome sets hold the job: exactly one for a finished job."""
        found = []
        for status in ("completed", "failed", "cancelled"):
            if await self.redis.execute(b"ZSCORE", self.keys.finished(status), job_id):
                found.append(status)
        return found


@asynccontextmanager
async def open_observer(redis_url: str, queue: str) -> AsyncIterator[Observer]:
    config = load_config(
        environ=redis_env(redis_url, queue), overrides=["redis.command_timeout_s=2"]
    )
    async with (
        open_broker(config) as broker,
        open_redis(
            RedisConfig(url=redis_url, command_timeout_s=2.0), name="flowqd-observer"
        ) as redis,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(broker.run)
        flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
        yield Observer(broker, flows, redis, QueueKeys(queue))
        nursery.cancel_scope.cancel()


async def gather(
    fn: Callable[[T], Awaitable[R]], items: Sequence[T], *, at_once: int = 100
) -> list[R]:
    """``fn`` over ``items`` concurrently (at most ``at_once`` in flight), results in order."""
    results: list[Any] = [None] * len(items)
    limiter = trio.CapacityLimiter(at_once)

    async def one(i: int, item: T) -> None:
        async with limiter:
            results[i] = await fn(item)

    async with trio.open_nursery() as nursery:
        for i, item in enumerate(items):
            nursery.start_soon(one, i, item)
    return results


def terminal_count(events: Sequence[Event]) -> int:
    return sum(e.name in TERMINAL_EVENTS for e in events)


def event_ms(event: Event) -> int:
    """The Redis clock (unix ms) at which an event was written: its stream id."""
    return int(event.id.split("-", 1)[0])


async def poll(check: Callable[[], Awaitable[bool]], *, every: float = 0.05) -> None:
    """Return once ``check()`` is true. Only for another process's state, which
    offers nothing to wait on; the caller's ``fail_after`` bounds it."""
    while True:
        if await check():
            return
        await trio.sleep(every)


async def status_of(client: httpx.AsyncClient, url: str) -> int:
    return (await client.get(url)).status_code


async def metric(client: httpx.AsyncClient, base: str, name: str) -> float:
    text = (await client.get(f"{base}/metrics")).text
    match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert match is not None, name
    return float(match[1])


async def count_in(observer: Observer, status: JobStatus) -> int:
    return (await observer.broker.control.counts())[status]


def now_ms() -> int:
    return int(time.time() * 1000)

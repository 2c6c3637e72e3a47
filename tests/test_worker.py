"""The worker loop against both brokers: outcomes, drain, cancel, timeouts, failures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from flowqd import Executor
from flowqd.config import Config, PluginsConfig, load_config
from flowqd.errors import CredentialError
from flowqd.flows import FlowStore
from flowqd.jobs import END, ERROR, Job, JobSpec, JobStatus
from flowqd.metrics import Registry
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import Broker, open_broker
from flowqd.worker import FLUSH_EVENTS_MAX, Worker, WorkerMetrics


@attrs.frozen
class BoomParams:
    message: str = "boom"


async def _boom(ctx: Any) -> Any:
    raise RuntimeError(ctx.params.message)


BOOM = Executor(type="boom", params=BoomParams, run=_boom, description="always fails")


@attrs.frozen
class ChattyParams:
    count: int = 1


async def _chatty(ctx: Any) -> Any:
    # No checkpoint between emits: everything lands in the flusher at once.
    for i in range(ctx.params.count):
        ctx.emit("token", i)
    return ctx.params.count


CHATTY = Executor(
    type="chatty", params=ChattyParams, run=_chatty, description="emits `count` token events"
)


@attrs.define(eq=False)
class Harness:
    broker: Broker
    flows: FlowStore
    worker: Worker
    shutdown: trio.Event
    done: trio.Event

    async def enqueue(self, flow_id: str, n: int = 1, **spec: Any) -> list[str]:
        version = await self.flows.current_version(flow_id)
        assert version is not None
        return await self.broker.jobs.enqueue(
            [
                JobSpec(flow_id=flow_id, flow_version=version, inputs={"question": f"q{i}"}, **spec)
                for i in range(n)
            ]
        )

    async def wait_event(self, job_id: str, name: str) -> None:
        async with self.broker.jobs.open_event_watch(job_id) as batches:
            async for batch in batches:
                if any(event.name == name for event in batch):
                    return
        raise AssertionError(f"job {job_id} ended without a {name!r} event")

    async def wait_terminal(self, job_id: str) -> Job:
        async with self.broker.jobs.open_event_watch(job_id) as batches:
            async for _ in batches:
                pass  # the stream ends after the terminal event
        job = await self.broker.jobs.get_job(job_id)
        assert job is not None
        return job

    async def stop(self) -> None:
        self.shutdown.set()
        await self.done.wait()


def make_config(kind: str, redis_url: str, queue_name: str, *extra: str, **worker: Any) -> Config:
    """``kind`` "redis" or "cluster" (the Redis broker on a Redis Cluster at ``redis_url``)."""
    worker.setdefault("shutdown_grace_s", 0.5)
    overrides = [f"worker.{k}={v}" for k, v in worker.items()]
    overrides += [f"queue.name={queue_name}", "worker.stalled_interval_s=1", *extra]
    env = {"REDIS_URL": redis_url} if kind in ("redis", "cluster") else {}
    if kind == "cluster":
        overrides.append("redis.cluster=true")
    return load_config(environ=env, overrides=overrides)


@pytest.fixture(params=["memory", "redis", "cluster"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def redis_url_of(kind: str, request: pytest.FixtureRequest) -> str:
    """The session Redis, or for "cluster" the session Redis Cluster's seed."""
    if kind == "memory":
        return ""
    fixture = "redis_cluster" if kind == "cluster" else "redis_server"
    return str(request.getfixturevalue(fixture).url)


@pytest.fixture
def harness_factory(
    broker_kind: str, request: pytest.FixtureRequest, queue_name: str
) -> Callable[..., Any]:
    redis_url = redis_url_of(broker_kind, request)

    @asynccontextmanager
    async def factory(
        *,
        overrides: Sequence[str] = (),
        executors: Sequence[Executor] = (),
        credentials: Mapping[str, str] | None = None,
        **worker: Any,
    ) -> AsyncIterator[Harness]:
        """A worker on this test's broker; ``overrides`` are ``--set`` items, ``executors``
        extra node types, ``credentials`` what ``ctx.credential`` finds."""
        config = make_config(broker_kind, redis_url, queue_name, *overrides, **worker)
        found = collect_executors(load_plugins(PluginsConfig()))
        for extra in (BOOM, CHATTY, *executors):
            found[extra.type] = extra
        known = dict(credentials or {})

        async def no_credentials(name: str) -> str:
            if name in known:
                return known[name]
            raise CredentialError(f"credential {name!r} does not exist")

        async with open_broker(config) as broker, trio.open_nursery() as nursery:
            await nursery.start(broker.run)
            flows = FlowStore(broker.flow_documents, found)
            for doc in FLOWS:
                await flows.put(doc)
            w = Worker(
                broker.work, flows, config, WorkerMetrics(Registry()), credential=no_credentials
            )
            shutdown, done = trio.Event(), trio.Event()

            async def run_worker(
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                try:
                    await w.run(shutdown, task_status=task_status)
                finally:
                    done.set()

            await nursery.start(run_worker)
            h = Harness(broker, flows, w, shutdown, done)
            yield h
            if not shutdown.is_set():
                await h.stop()
            nursery.cancel_scope.cancel()

    return factory


FLOWS = [
    {"id": "echo", "nodes": [{"id": "e", "type": "echo"}], "output": "e"},
    {
        "id": "slow",
        "nodes": [{"id": "d", "type": "delay", "params": {"ms": 60_000}}],
        "output": "d",
    },
    {"id": "short", "nodes": [{"id": "d", "type": "delay", "params": {"ms": 50}}], "output": "d"},
    {
        "id": "boom",
        "nodes": [{"id": "b", "type": "boom", "params": {"message": "kaput"}}],
        "output": "b",
    },
]


async def test_events_beyond_one_flush_arrive_in_order_before_the_outcome(
    harness_factory: Any,
) -> None:
    # More events than one flush call takes (FLUSH_EVENTS_MAX), from three
    # jobs at once: each stream holds all of its tokens in order, then `end`.
    count = FLUSH_EVENTS_MAX + 1000
    with trio.fail_after(60):
        async with harness_factory() as h:
            await h.flows.put(
                {
                    "id": "chatty",
                    "output": "c",
                    "nodes": [{"id": "c", "type": "chatty", "params": {"count": count}}],
                }
            )
            ids = await h.enqueue("chatty", 3)
            for job_id in ids:
                job = await h.wait_terminal(job_id)
                assert job.status == JobStatus.COMPLETED and job.result == count
                events = await h.broker.jobs.read_events(job_id, count=count + 10)
                tokens = [e.data for e in events if e.name == "token"]
                assert tokens == list(range(count))
                assert events[-1].name == END
                assert [e.name for e in events].count(END) == 1


async def test_jobs_complete_with_results_and_events(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            ids = await h.enqueue("echo", 50)
            jobs = [await h.wait_terminal(job_id) for job_id in ids]
            assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 50
            assert [j.result for j in jobs] == [f"q{i}" for i in range(50)]
            events = await h.broker.jobs.read_events(ids[0])
            names = [e.name for e in events]
            assert names[0] == "started" and names[-1] == END
            assert names.count(END) == 1
            assert jobs[0].nodes and jobs[0].nodes[0]["nodeId"] == "e"


async def test_failing_node_fails_job_with_node_and_message(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            [job_id] = await h.enqueue("boom")
            job = await h.wait_terminal(job_id)
            assert job.status == JobStatus.FAILED
            assert job.error is not None
            assert job.error["node"] == "b"
            assert "kaput" in job.error["message"]
            events = await h.broker.jobs.read_events(job_id)
            assert events[-1].name == ERROR
            assert "kaput" in events[-1].data["message"]


async def test_job_timeout_fails_with_reason(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            [job_id] = await h.enqueue("slow", timeout_s=0.2)
            job = await h.wait_terminal(job_id)
            assert job.status == JobStatus.FAILED
            assert job.error is not None and job.error["reason"] == "timeout"


async def test_cancel_running_job(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            [job_id] = await h.enqueue("slow")
            await h.wait_event(job_id, "node_start")
            await h.broker.jobs.cancel(job_id)
            job = await h.wait_terminal(job_id)
            assert job.status == JobStatus.CANCELLED
            assert [e.name for e in await h.broker.jobs.read_events(job_id)].count("cancelled") == 1


async def test_drain_requeues_unfinished_jobs_without_counting_the_attempt(
    harness_factory: Any,
) -> None:
    with trio.fail_after(30):
        async with harness_factory(shutdown_grace_s=0.3) as h:
            ids = await h.enqueue("slow", 5)
            for job_id in ids:
                await h.wait_event(job_id, "node_start")
            await h.stop()
            jobs = [await h.broker.jobs.get_job(job_id) for job_id in ids]
            assert all(j is not None and j.status == JobStatus.WAITING for j in jobs), [
                (j.status, j.attempts) for j in jobs if j
            ]
            assert all(j is not None and j.attempts == 0 for j in jobs)


async def test_drain_lets_short_jobs_finish(harness_factory: Any) -> None:
    with trio.fail_after(30):
        async with harness_factory(shutdown_grace_s=10) as h:
            ids = await h.enqueue("short", 5)
            for job_id in ids:
                await h.wait_event(job_id, "node_start")
            await h.stop()
            jobs = [await h.broker.jobs.get_job(job_id) for job_id in ids]
            assert all(j is not None and j.status == JobStatus.COMPLETED for j in jobs), jobs


async def test_unknown_flow_version_fails_without_retry(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            [job_id] = await h.broker.jobs.enqueue(
                [JobSpec(flow_id="echo", flow_version=99, max_attempts=3)]
            )
            job = await h.wait_terminal(job_id)
            assert job.status == JobStatus.FAILED
            assert job.attempts == 1
            assert job.error is not None and "version 99 does not exist" in job.error["message"]


async def test_concurrency_limit_is_respected(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory(concurrency=3) as h:
            ids = await h.enqueue("slow", 5)
            for job_id in ids[:3]:
                await h.wait_event(job_id, "node_start")
            counts = await h.broker.control.counts()
            assert counts[JobStatus.ACTIVE] == 3
            assert counts[JobStatus.WAITING] == 2
            assert len(h.worker._held) == 3


async def test_prompt_to_llm_flow_streams_tokens_in_order_through_the_worker(
    harness_factory: Any,
) -> None:
    from tests.flows.httpserver import open_http_server, streaming_llm

    tokens = ["Hel", "lo", ", ", "wor", "ld", "!"]
    with trio.fail_after(20):
        async with open_http_server(streaming_llm(tokens)) as llm, harness_factory() as h:
            flow_id, _ = await h.flows.put(
                {
                    "id": "greet",
                    "nodes": [
                        {
                            "id": "prompt",
                            "type": "template",
                            "params": {"template": "Say hello to {question}"},
                        },
                        {
                            "id": "answer",
                            "type": "llm",
                            "params": {"base_url": f"{llm.url}/v1", "model": "m"},
                            "inputs": {"prompt": "prompt"},
                        },
                    ],
                    "output": "answer",
                }
            )
            [job_id] = await h.enqueue(flow_id)
            job = await h.wait_terminal(job_id)
            assert job.status == JobStatus.COMPLETED, job.error
            assert job.result == "Hello, world!"
            events = await h.broker.jobs.read_events(job_id)
            assert [e.data for e in events if e.name == "token"] == tokens
            names = [e.name for e in events]
            # Tokens come between the llm node's start and end, then the terminal event.
            starts = [i for i, e in enumerate(events) if e.name == "node_start"]
            ends = [i for i, e in enumerate(events) if e.name == "node_end"]
            token_at = [i for i, name in enumerate(names) if name == "token"]
            assert starts[1] < token_at[0] and token_at[-1] < ends[1]
            assert names[-1] == END
            [request] = llm.requests
            assert request.json()["messages"][-1]["content"] == "Say hello to q0"
            assert request.json()["stream"] is True

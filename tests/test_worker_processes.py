"""Worker processes against a real Redis: many workers, kill -9, drains, forced stops."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from flowqd.config import PluginsConfig, load_config
from flowqd.flows import FlowStore
from flowqd.jobs import TERMINAL_EVENTS, Job, JobSpec, JobStatus
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import Broker, open_broker
from tests.daemonproc import Daemon, start_daemon
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

FLOWS = [
    {"id": "echo", "nodes": [{"id": "e", "type": "echo"}], "output": "e"},
    {"id": "wait", "nodes": [{"id": "d", "type": "delay", "params": {"ms": 1500}}], "output": "d"},
    {
        "id": "long",
        "nodes": [{"id": "d", "type": "delay", "params": {"ms": 120_000}}],
        "output": "d",
    },
]


class Client:
    def __init__(self, broker: Broker, flows: FlowStore) -> None:
        self.broker, self.flows = broker, flows

    async def enqueue(self, flow_id: str, n: int) -> list[str]:
        version = await self.flows.current_version(flow_id)
        assert version is not None
        return await self.broker.jobs.enqueue(
            [
                JobSpec(flow_id=flow_id, flow_version=version, inputs={"question": f"q{i}"})
                for i in range(n)
            ]
        )

    async def wait_event(self, job_id: str, name: str) -> None:
        async with self.broker.jobs.open_event_watch(job_id) as batches:
            async for batch in batches:
                if any(event.name == name for event in batch):
                    return

    async def finished(self, job_id: str) -> Job:
        async with self.broker.jobs.open_event_watch(job_id) as batches:
            async for _ in batches:
                pass
        job = await self.broker.jobs.get_job(job_id)
        assert job is not None
        return job

    async def event_names(self, job_id: str) -> list[str]:
        return [e.name for e in await self.broker.jobs.read_events(job_id)]


@asynccontextmanager
async def open_client(redis_url: str, queue_name: str) -> AsyncIterator[Client]:
    config = load_config(environ={"REDIS_URL": redis_url, "QUEUE_NAME": queue_name})
    async with open_broker(config) as broker, trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
        for doc in FLOWS:
            await flows.put(doc)
        yield Client(broker, flows)
        nursery.cancel_scope.cancel()


def worker_args(*extra: str) -> list[str]:
    return [
        "--role",
        "worker",
        "--set",
        "worker.lock_ttl_s=1",
        "--set",
        "worker.stalled_interval_s=0.5",
        *extra,
    ]


def worker_id(daemon: Daemon) -> str:
    match = re.search(r"worker (\S+) taking jobs", daemon.text())
    assert match, daemon.text()
    return match.group(1)


async def test_1000_jobs_through_4_worker_processes_one_outcome_each(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    with trio.fail_after(120):
        async with open_client(redis_server.url, queue_name) as client:
            ids = await client.enqueue("echo", 1000)
            async with (
                start_daemon(worker_args(), env=env, cwd=str(tmp_path)) as w1,
                start_daemon(worker_args(), env=env, cwd=str(tmp_path)) as w2,
                start_daemon(worker_args(), env=env, cwd=str(tmp_path)) as w3,
                start_daemon(worker_args(), env=env, cwd=str(tmp_path)) as w4,
            ):
                jobs = [await client.finished(job_id) for job_id in ids]
                workers = {worker_id(w) for w in (w1, w2, w3, w4)}
            assert all(j.status == JobStatus.COMPLETED for j in jobs)
            assert [j.result for j in jobs] == [f"q{i}" for i in range(1000)]
            assert all(j.attempts == 1 for j in jobs)
            assert {j.worker for j in jobs} <= workers
            for job_id in ids[::50]:
                names = await client.event_names(job_id)
                assert names.count("started") == 1
                assert sum(name in TERMINAL_EVENTS for name in names) == 1
            counts = await client.broker.control.counts()
            assert counts[JobStatus.COMPLETED] == 1000
            assert counts[JobStatus.ACTIVE] == counts[JobStatus.WAITING] == 0


async def test_kill_9_worker_jobs_complete_on_another_worker(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    with trio.fail_after(60):
        async with open_client(redis_server.url, queue_name) as client:
            async with start_daemon(worker_args(), env=env, cwd=str(tmp_path)) as doomed:
                ids = await client.enqueue("wait", 20)
                for job_id in ids:
                    await client.wait_event(job_id, "node_start")
                doomed_id = worker_id(doomed)
                doomed.signal(signal.SIGKILL)
                assert await doomed.wait(5) == -signal.SIGKILL
            held = [await client.broker.jobs.get_job(job_id) for job_id in ids]
            assert all(j is not None and j.status == JobStatus.ACTIVE for j in held)
            assert all(j is not None and j.worker == doomed_id for j in held)
            async with start_daemon(worker_args(), env=env, cwd=str(tmp_path)) as rescuer:
                jobs = [await client.finished(job_id) for job_id in ids]
                rescuer_id = worker_id(rescuer)
            assert all(j.status == JobStatus.COMPLETED for j in jobs), [j.status for j in jobs]
            assert all(j.worker == rescuer_id for j in jobs)
            assert all(j.attempts == 2 for j in jobs)  # the stall counted
            for job_id in ids:
                names = await client.event_names(job_id)
                assert sum(name in TERMINAL_EVENTS for name in names) == 1
                assert names.count("started") == 2


async def test_sigterm_drains_and_requeued_jobs_finish_elsewhere(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    with trio.fail_after(60):
        async with open_client(redis_server.url, queue_name) as client:
            async with start_daemon(
                worker_args("--set", "worker.shutdown_grace_s=0.2"), env=env, cwd=str(tmp_path)
            ) as first:
                ids = await client.enqueue("long", 10)
                for job_id in ids:
                    await client.wait_event(job_id, "node_start")
                first.signal(signal.SIGTERM)
                assert await first.wait(10) == 0
            jobs = [await client.broker.jobs.get_job(job_id) for job_id in ids]
            assert all(j is not None and j.status == JobStatus.WAITING for j in jobs)
            assert all(j is not None and j.attempts == 0 for j in jobs)  # not counted
            async with start_daemon(
                worker_args("--set", "worker.job_timeout_s=0.5"), env=env, cwd=str(tmp_path)
            ):
                done = [await client.finished(job_id) for job_id in ids]
            # 120 s delays cannot finish in 0.5 s: they time out on the second
            # worker, which proves it ran them (attempt 1 there, not 2).
            assert all(j.status == JobStatus.FAILED for j in done)
            assert all(j.error is not None and j.error["reason"] == "timeout" for j in done)
            assert all(j.attempts == 1 for j in done)


async def test_second_signal_stops_at_once(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    with trio.fail_after(60):
        async with open_client(redis_server.url, queue_name) as client:
            async with start_daemon(
                worker_args("--set", "worker.shutdown_grace_s=60"), env=env, cwd=str(tmp_path)
            ) as daemon:
                [job_id] = await client.enqueue("long", 1)
                await client.wait_event(job_id, "node_start")
                daemon.signal(signal.SIGTERM)
                await daemon.wait_for_log("draining")
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait(5) == 128 + signal.SIGTERM
            assert "stopped at once" in daemon.text()


async def test_worker_resumes_after_redis_restart(
    own_redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": own_redis_server.url, "QUEUE_NAME": queue_name}
    with trio.fail_after(90):
        async with start_daemon(
            worker_args("--set", "redis.command_timeout_s=0.5"), env=env, cwd=str(tmp_path)
        ) as daemon:
            async with open_client(own_redis_server.url, queue_name) as client:
                [first] = await client.enqueue("echo", 1)
                assert (await client.finished(first)).status == JobStatus.COMPLETED
            await trio.to_thread.run_sync(own_redis_server.restart)
            async with open_client(own_redis_server.url, queue_name) as client:
                ids = await client.enqueue("echo", 20)
                jobs = [await client.finished(job_id) for job_id in ids]
            assert all(j.status == JobStatus.COMPLETED for j in jobs)
            daemon.signal()
            assert await daemon.wait(10) == 0

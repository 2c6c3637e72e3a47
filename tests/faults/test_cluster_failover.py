"""A Redis Cluster primary failing over while 1,000 jobs flow through main and a worker.

The primary that owns the queue's slot is replaced by its replica: cleanly
(``CLUSTER FAILOVER`` on the replica, which catches up first), or by a
``kill -9`` after which the cluster promotes the replica itself (with
``redis.wait_replicas = 1``, so that what the API acknowledged is on the
replica). Either way every acknowledged job ends with exactly one outcome and
one terminal event, the API answers within its deadline throughout (202 or
503, never a hang), and it serves again once the cluster has a primary.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from flowqd.config import PluginsConfig, RedisConfig, load_config
from flowqd.flows import FlowStore
from flowqd.jobs import JobStatus
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import open_broker
from flowqd.queue.keys import QueueKeys, prefix_of
from flowqd.redis import open_redis
from tests.daemonproc import Daemon, start_daemon
from tests.faults.helpers import (
    Observer,
    assert_no_crash,
    delay_flow,
    gather,
    metric,
    poll,
    settings,
    terminal_count,
    write_flows,
)
from tests.redisproc import RedisCluster

pytestmark = pytest.mark.slow

JOBS = 1000
BATCH = 50
PREDICTIONS = 10
# server.broker_timeout_s (1 s): every API answer must come within it, plus slack
# for two shared cores running main, a worker, six redis-servers and the test.
ANSWER_WITHIN_S = 1.0 + 1.5


@attrs.define
class Load:
    """What the API answered while the jobs went in."""

    latencies: list[float] = attrs.Factory(list)
    statuses: Counter[int] = attrs.Factory(Counter)
    failed_requests: int = 0

    async def timed(
        self, request: Callable[[], Awaitable[httpx.Response]]
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await request()
        except httpx.TransportError:
            self.failed_requests += 1
            return None
        finally:
            self.latencies.append(time.monotonic() - started)
        self.statuses[response.status_code] += 1
        return response


def cluster_env(cluster: RedisCluster, queue: str) -> dict[str, str]:
    return {"REDIS_URL": cluster.url, "QUEUE_NAME": queue, "FLOWQD_REDIS__CLUSTER": "true"}


@asynccontextmanager
async def open_cluster_observer(cluster: RedisCluster, queue: str) -> AsyncIterator[Observer]:
    """``tests.faults.helpers.open_observer`` on the cluster."""
    config = load_config(
        environ=cluster_env(cluster, queue), overrides=["redis.command_timeout_s=2"]
    )
    redis_config = RedisConfig(cluster=True, url=cluster.url, command_timeout_s=2.0)
    async with (
        open_broker(config) as broker,
        open_redis(redis_config, name="flowqd-observer") as redis,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(broker.run)
        flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
        yield Observer(broker, flows, redis, QueueKeys(queue))
        nursery.cancel_scope.cancel()


async def clean_failover(cluster: RedisCluster, primary: int) -> None:
    await trio.to_thread.run_sync(cluster.failover, primary)


async def kill_primary(cluster: RedisCluster, primary: int) -> None:
    """``kill -9`` the primary, wait until the cluster promoted its replica, then
    start the dead node again (it rejoins as the new primary's replica, which
    ``wait_replicas = 1`` needs for the API to acknowledge again)."""
    cluster.kill(primary)

    async def promoted() -> bool:
        return primary not in await trio.to_thread.run_sync(cluster.primaries)

    with trio.fail_after(30):
        await poll(promoted)
    await trio.to_thread.run_sync(cluster.heal)


async def run_scenario(
    cluster: RedisCluster,
    queue: str,
    tmp_path: Path,
    fault: Callable[[RedisCluster, int], Awaitable[None]],
    *extra: str,
) -> None:
    env = cluster_env(cluster, queue)
    flows = write_flows(tmp_path / "flows", [delay_flow("work", 20), delay_flow("ask", 500)])
    common = [*settings(redis__command_timeout_s=1), *extra]
    worker_args = [
        "--role",
        "worker",
        *settings(worker__lock_ttl_s=3, worker__stalled_interval_s=0.5, worker__concurrency=100),
        *common,
    ]
    main_args = [
        "--role",
        "main",
        *settings(flows__paths=flows, server__prediction_timeout_s=60),
        *common,
    ]
    ids = [f"c-{i}" for i in range(JOBS)]
    load, probes = Load(), Load()
    answers: list[tuple[int, object]] = []
    figures: dict[str, float] = {}
    with trio.fail_after(150):
        async with (
            start_daemon(main_args, env=env, cwd=str(tmp_path)) as main,
            start_daemon(worker_args, env=env, cwd=str(tmp_path)) as worker,
        ):
            async with httpx.AsyncClient(base_url=main.api, timeout=30) as client:
                done = trio.Event()

                async def produce() -> None:
                    # A batch answered 503 is sent again with the same job ids:
                    # enqueueing is idempotent, so a retry never doubles a job.
                    for start in range(0, JOBS, BATCH):
                        body = {
                            "jobs": [
                                {"flow": "work", "job_id": job_id, "inputs": {"question": job_id}}
                                for job_id in ids[start : start + BATCH]
                            ]
                        }
                        while True:
                            response = await load.timed(
                                partial(client.post, "/api/v1/jobs", json=body)
                            )
                            if response is not None and response.status_code == 202:
                                break
                            assert response is None or response.status_code == 503, response.text
                            await trio.sleep(0.05)
                        await trio.sleep(0.05)

                async def probe() -> None:
                    while not done.is_set():
                        await probes.timed(lambda: client.get("/api/v1/queue"))
                        await trio.sleep(0.05)

                async def predict(i: int) -> None:
                    response = await client.post(
                        "/api/v1/prediction/ask", json={"question": f"p{i}"}
                    )
                    ok = response.status_code == 200
                    answers.append((response.status_code, response.json() if ok else response.text))

                async def break_primary() -> None:
                    await poll(lambda: _accepted_at_least(load, JOBS // 3))
                    for i in range(PREDICTIONS):
                        nursery.start_soon(predict, i)
                    # Each waiting prediction has its job in Redis before the fault.
                    await poll(lambda: _waiting_at_least(client, main.api, PREDICTIONS))
                    primary = await trio.to_thread.run_sync(cluster.owner, prefix_of(queue))
                    started = time.monotonic()
                    await fault(cluster, primary)
                    figures["fault_s"] = time.monotonic() - started
                    assert await trio.to_thread.run_sync(cluster.owner, prefix_of(queue)) != primary

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(probe)
                    async with trio.open_nursery() as load_nursery:
                        load_nursery.start_soon(produce)
                        load_nursery.start_soon(break_primary)
                    done.set()
                # Serves again: a new job acknowledged and a prediction answered.
                after = await client.post(
                    "/api/v1/jobs",
                    json={
                        "jobs": [{"flow": "work", "job_id": "c-after", "inputs": {"question": "a"}}]
                    },
                )
                assert after.status_code == 202, after.text
                answer = await client.post("/api/v1/prediction/ask", json={"question": "after"})
                assert answer.status_code == 200, answer.text
            async with open_cluster_observer(cluster, queue) as observer:
                jobs = await observer.all_finished([*ids, "c-after"])
                events = await gather(observer.events, ids)
                where = await gather(observer.in_finished_sets, ids)
                counts = await observer.broker.control.counts()
            assert_no_crash(main, worker)
            for daemon in (main, worker):
                daemon.signal(signal.SIGTERM)
            for name, daemon in (("main", main), ("worker", worker)):
                assert await _stopped(daemon, 15) == 0, f"{name}:\n" + daemon.text()[-4000:]
    starts = Counter(sum(e.name == "started" for e in job_events) for job_events in events)
    print(
        f"\ncluster primary fault with {JOBS} jobs flowing: fault took {figures['fault_s']:.2f}s; "
        f"enqueue answers {dict(load.statuses)}, slowest {max(load.latencies):.2f}s; "
        f"/api/v1/queue probes {dict(probes.statuses)}, slowest {max(probes.latencies):.2f}s; "
        f"executions per job {dict(starts)}, attempts {dict(Counter(j.attempts for j in jobs))}"
    )
    assert load.failed_requests == probes.failed_requests == 0
    assert max(load.latencies + probes.latencies) < ANSWER_WITHIN_S
    assert set(load.statuses) <= {202, 503} and set(probes.statuses) <= {200, 503}
    assert all(j.status == JobStatus.COMPLETED for j in jobs), Counter(j.status for j in jobs)
    assert [j.result for j in jobs[:JOBS]] == ids
    assert where == [["completed"]] * JOBS
    assert all(terminal_count(job_events) == 1 for job_events in events)
    assert counts[JobStatus.COMPLETED] == JOBS + PREDICTIONS + 2
    assert counts[JobStatus.WAITING] == counts[JobStatus.ACTIVE] == 0
    assert all(status == 200 for status, _ in answers) and len(answers) == PREDICTIONS, answers
    assert sorted(body["text"] for _, body in answers) == sorted(  # type: ignore[index]
        f"p{i}" for i in range(PREDICTIONS)
    )


async def _accepted_at_least(load: Load, n: int) -> bool:
    return load.statuses[202] * BATCH >= n


async def _waiting_at_least(client: httpx.AsyncClient, base: str, n: int) -> bool:
    return await metric(client, base, "flowqd_api_predictions_waiting") >= n


async def _stopped(daemon: Daemon, seconds: float) -> int | None:
    with trio.move_on_after(seconds):
        return await daemon.process.wait()
    return None


async def test_clean_failover_of_the_queue_primary_loses_nothing(
    healthy_cluster: RedisCluster, queue_name: str, tmp_path: Path
) -> None:
    await run_scenario(healthy_cluster, queue_name, tmp_path, clean_failover)


async def test_killed_queue_primary_with_wait_replicas_loses_nothing(
    healthy_cluster: RedisCluster, queue_name: str, tmp_path: Path
) -> None:
    await run_scenario(
        healthy_cluster, queue_name, tmp_path, kill_primary, *settings(redis__wait_replicas=1)
    )

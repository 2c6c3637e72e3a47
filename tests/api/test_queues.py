"""Several queues through the API (issue 17, item 2), on the embedded broker and on Redis.

A flow names its queue; its jobs go there, a pool of the worker takes them,
the job routes find them there, and the queue routes act on the queue
``?queue=`` names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from flowqd.jobs import Job
from tests.api.conftest import FLOWS, Api, open_api
from tests.queue.helpers import watch_events

BULK_ECHO = {
    "id": "bulk-echo",
    "queue": "bulk",
    "nodes": [{"id": "e", "type": "echo"}],
    "output": "e",
}
BULK_SLOW = {
    "id": "bulk-slow",
    "queue": "bulk",
    "nodes": [{"id": "d", "type": "delay", "params": {"ms": 60_000}}],
    "output": "d",
}


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, queue_name: str) -> dict[str, str]:
    """The environment of each broker kind; the default queue is ``queue_name``."""
    if request.param == "memory":
        return {"QUEUE_NAME": queue_name}
    url = request.getfixturevalue("redis_url")
    return {"REDIS_URL": url, "QUEUE_NAME": queue_name}


@asynccontextmanager
async def two_queues(env: dict[str, str], *overrides: str) -> AsyncIterator[Api]:
    """The default queue and ``bulk`` (named per test on Redis), a pool for each."""
    default = env["QUEUE_NAME"]
    bulk = f"{default}-bulk"
    flows = [*FLOWS, {**BULK_ECHO, "queue": bulk}, {**BULK_SLOW, "queue": bulk}]
    async with open_api(
        f"queues.{bulk}.max_attempts=2",
        f"worker.queues={default}:3,{bulk}:1",
        "worker.concurrency=8",
        *overrides,
        environ=env,
        flows=flows,
    ) as api:
        yield api


async def finished(api: Api, queue: str, job_id: str) -> Job:
    assert api.brokers is not None
    jobs = api.brokers[queue].jobs
    async for _event in watch_events(jobs, job_id):
        pass
    job = await jobs.get_job(job_id)
    assert job is not None
    return job


async def enqueue(api: Api, flow: str, inputs: dict[str, Any] | None = None) -> str:
    answer = await api.client.post("/api/v1/jobs", json={"flow": flow, "inputs": inputs or {}})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


async def test_jobs_go_to_their_flows_queue_and_its_pool_runs_them(
    backend: dict[str, str],
) -> None:
    default = backend["QUEUE_NAME"]
    bulk = f"{default}-bulk"
    with trio.fail_after(30):
        async with two_queues(backend) as api:
            assert api.pools is not None
            pool_of = {w.queue: w for w in api.pools.workers}
            # 8 slots split 3:1.
            assert pool_of[default].config.worker.concurrency == 6
            assert pool_of[bulk].config.worker.concurrency == 2
            in_bulk = await enqueue(api, "bulk-echo", {"question": "b"})
            in_default = await enqueue(api, "echo", {"question": "d"})
            job_b = await finished(api, bulk, in_bulk)
            job_d = await finished(api, default, in_default)
            assert job_b.worker == pool_of[bulk].id and job_b.max_attempts == 2
            assert job_d.worker == pool_of[default].id and job_d.max_attempts == 1
            # Found without naming the queue; named, only there.
            shown = (await api.client.get(f"/api/v1/jobs/{in_bulk}")).json()
            assert shown["queue"] == bulk and shown["status"] == "completed"
            assert shown["worker"] == pool_of[bulk].id
            found = await api.client.get(f"/api/v1/jobs/{in_bulk}", params={"queue": bulk})
            assert found.status_code == 200
            elsewhere = await api.client.get(f"/api/v1/jobs/{in_bulk}", params={"queue": default})
            assert elsewhere.status_code == 404 and f"not in queue {default!r}" in elsewhere.text
            unknown = await api.client.get("/api/v1/jobs", params={"queue": "nope"})
            assert unknown.status_code == 404 and "queue 'nope' not found" in unknown.text
            # Listing: every queue by default, one with ?queue=.
            listed = (await api.client.get("/api/v1/jobs")).json()["jobs"]
            assert {(j["id"], j["queue"]) for j in listed} == {
                (in_bulk, bulk),
                (in_default, default),
            }
            only = await api.client.get(
                "/api/v1/jobs", params={"queue": bulk, "status": "completed"}
            )
            assert [(j["id"], j["queue"]) for j in only.json()["jobs"]] == [(in_bulk, bulk)]
            # A prediction of a bulk flow runs in the bulk pool too.
            answer = await api.client.post("/api/v1/prediction/bulk-echo", json={"question": "p"})
            assert answer.status_code == 200, answer.text
            job_id = answer.headers["X-Flowqd-Job-Id"]
            predicted = (await api.client.get(f"/api/v1/jobs/{job_id}")).json()
            assert predicted["queue"] == bulk and predicted["worker"] == pool_of[bulk].id
            metrics = (await api.client.get("/metrics")).text
            assert f'flowqd_worker_jobs_total{{outcome="completed",queue="{bulk}"}} 2' in metrics
            assert f'flowqd_queue_jobs{{queue="{bulk}",state="completed"}} 2' in metrics
            assert f'flowqd_worker_pool_slots{{queue="{bulk}"}} 2' in metrics


async def test_pause_and_counts_are_per_queue(backend: dict[str, str]) -> None:
    default = backend["QUEUE_NAME"]
    bulk = f"{default}-bulk"
    with trio.fail_after(30):
        async with two_queues(backend) as api:
            paused = await api.client.post("/api/v1/queue/pause", params={"queue": bulk})
            assert paused.status_code == 200
            held = await enqueue(api, "bulk-echo", {"question": "b"})
            ran = await enqueue(api, "echo", {"question": "d"})
            assert (await finished(api, default, ran)).status.value == "completed"
            queues = (await api.client.get("/api/v1/queues")).json()
            assert queues["default"] == default
            by_name = {q["name"]: q for q in queues["queues"]}
            assert list(by_name) == [default, bulk]
            assert by_name[bulk]["paused"] and not by_name[default]["paused"]
            assert by_name[bulk]["counts"]["waiting"] == 1
            assert by_name[default]["counts"]["completed"] == 1
            one = (await api.client.get("/api/v1/queue", params={"queue": bulk})).json()
            assert one["name"] == bulk and one["paused"] and one["counts"]["waiting"] == 1
            # The default queue is what /api/v1/queue shows without ?queue=.
            assert (await api.client.get("/api/v1/queue")).json()["name"] == default
            metrics = (await api.client.get("/metrics")).text
            assert f'flowqd_queue_paused{{queue="{bulk}"}} 1' in metrics
            assert f'flowqd_queue_paused{{queue="{default}"}} 0' in metrics
            assert f'flowqd_queue_jobs{{queue="{bulk}",state="waiting"}} 1' in metrics
            resumed = await api.client.post("/api/v1/queue/resume", params={"queue": bulk})
            assert resumed.status_code == 200
            assert (await finished(api, bulk, held)).status.value == "completed"
            nope = await api.client.post("/api/v1/queue/pause", params={"queue": "nope"})
            assert nope.status_code == 404


async def test_cancel_and_clean_act_on_the_jobs_queue(backend: dict[str, str]) -> None:
    default = backend["QUEUE_NAME"]
    bulk = f"{default}-bulk"
    with trio.fail_after(30):
        async with two_queues(backend) as api:
            slow = await enqueue(api, "bulk-slow")
            cancelled = await api.client.post(f"/api/v1/jobs/{slow}/cancel")
            assert cancelled.status_code in (200, 202) and cancelled.json()["queue"] == bulk
            assert (await finished(api, bulk, slow)).status.value == "cancelled"
            cleaned = await api.client.post(
                "/api/v1/queue/clean", params={"queue": default}, json={"status": "cancelled"}
            )
            assert cleaned.json()["removed"] == 0  # the default queue has none
            cleaned = await api.client.post(
                "/api/v1/queue/clean", params={"queue": bulk}, json={"status": "cancelled"}
            )
            assert cleaned.json()["removed"] == 1
            assert (await api.client.get(f"/api/v1/jobs/{slow}")).status_code == 404


async def test_a_flow_must_name_a_configured_queue(backend: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with two_queues(backend) as api:
            flow = {"queue": "elsewhere", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}
            answer = await api.client.put("/api/v1/flows/lost", json=flow)
            assert answer.status_code == 422
            [problem] = answer.json()["problems"]
            assert problem["path"] == "$.queue"
            assert "unknown queue 'elsewhere'" in problem["message"]
            assert "[queues.elsewhere]" in problem["message"]
            bad = await api.client.put("/api/v1/flows/lost", json={**flow, "queue": 7})
            assert bad.status_code == 422 and bad.json()["problems"][0]["path"] == "$.queue"


async def test_a_queue_rate_limit_applies_to_that_queue_only(backend: dict[str, str]) -> None:
    bulk = f"{backend['QUEUE_NAME']}-bulk"
    with trio.fail_after(30):
        async with two_queues(backend, f"queues.{bulk}.per_minute=1", "limits.burst=1") as api:
            await enqueue(api, "bulk-echo", {"question": "1"})
            refused = await api.client.post(
                "/api/v1/jobs", json={"flow": "bulk-echo", "inputs": {"question": "2"}}
            )
            assert refused.status_code == 429 and "Retry-After" in refused.headers
            assert f"queues.{bulk}.per_minute" in refused.json()["message"]
            predicted = await api.client.post(
                "/api/v1/prediction/bulk-echo", json={"question": "3"}
            )
            assert predicted.status_code == 429
            for n in range(3):  # the default queue has no limit
                await enqueue(api, "echo", {"question": str(n)})


async def test_a_flow_on_another_queue_keeps_its_conversation_there(
    backend: dict[str, str],
) -> None:
    """Its jobs write their turns in their own queue; the chat-message routes read them there."""
    default = backend["QUEUE_NAME"]
    async with two_queues(backend) as api:
        with trio.fail_after(20):
            answer = await api.client.post(
                "/api/v1/prediction/bulk-echo",
                json={"question": "hello", "overrideConfig": {"sessionId": "s-1"}},
            )
            assert answer.status_code == 200, answer.text
            listed = await api.client.get(
                "/api/v1/chatmessage/bulk-echo", params={"sessionId": "s-1"}
            )
            assert listed.status_code == 200, listed.text
            messages = listed.json()
            assert [m["role"] for m in messages] == ["userMessage", "apiMessage"]
            assert messages[0]["content"] == "hello"
            assert api.brokers is not None
            # In the bulk queue's keys, not the default queue's.
            assert (
                await api.brokers[default].conversations.sessions(
                    "bulk-echo", owner=None, all_owners=True
                )
                == []
            )
            cleared = await api.client.delete(
                "/api/v1/chatmessage/bulk-echo", params={"sessionId": "s-1"}
            )
            assert cleared.json()["affected"] == 2  # messages: a question and its answer

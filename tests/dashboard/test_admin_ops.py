"""The dashboard's admin operations over HTTP, on both brokers: retry every failed job,
clean a state, delete a job, promote a delayed one; the failing node's traceback for
admin keys only; retry keeps the earlier run's events; what a non-admin key may see
of the queue as a whole (no counts, no throughput, no jobs held).

Rules as everywhere: loopback, port 0, ``trio.fail_after`` around I/O, no sleeps.
"""

from __future__ import annotations

from typing import Any

import trio

from flowqd.flows.runner import TRACEBACK_MAX_CHARS, bounded_traceback
from tests.api.conftest import ADMIN_KEY, ALICE_KEY, BOB_KEY, Api, bearer, keyring, open_api
from tests.api.sse import parse_sse
from tests.queue.helpers import wait_until

ADMIN, ALICE, BOB = bearer(ADMIN_KEY), bearer(ALICE_KEY), bearer(BOB_KEY)


async def enqueue(api: Api, headers: dict[str, str], flow: str, **extra: Any) -> str:
    body = {"flow": flow, "inputs": {"question": "q"}, **extra}
    response = await api.client.post("/api/v1/jobs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def finished(api: Api, job_id: str) -> dict[str, Any]:
    # The event stream ends with the terminal event: no polling, no sleeps.
    stream = await api.client.get(f"/api/v1/jobs/{job_id}/events", headers=ADMIN)
    events, _ = parse_sse(stream.content)
    assert events[-1].name in ("end", "error", "cancelled")
    job: dict[str, Any] = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN)).json()
    return job


async def counts(api: Api) -> dict[str, int]:
    queue = (await api.client.get("/api/v1/queue", headers=ADMIN)).json()
    found: dict[str, int] = queue["counts"]
    return found


async def test_admin_operations_refuse_other_keys(broker_env: dict[str, str]) -> None:
    with trio.fail_after(20):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            job_id = await enqueue(api, ALICE, "echo", delay_s=3600)
            calls = [
                ("POST", "/api/v1/queue/retry-failed", None),
                ("POST", "/api/v1/queue/clean", {"status": "completed"}),
                ("DELETE", f"/api/v1/jobs/{job_id}", None),
                ("POST", f"/api/v1/jobs/{job_id}/promote", None),
                ("GET", "/api/v1/queue/throughput", None),
            ]
            for method, path, body in calls:
                response = await api.client.request(method, path, json=body, headers=ALICE)
                assert response.status_code == 403, (path, response.text)
                assert "needs an admin API key" in response.json()["message"]
            # Alice's own job, untouched by her refused calls.
            job = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=ALICE)).json()
            assert job["status"] == "delayed"


async def test_retry_all_failed_and_clean_a_state(broker_env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            failed = [await enqueue(api, ALICE, "boom") for _ in range(3)]
            ok = [await enqueue(api, BOB, "echo") for _ in range(2)]
            for job_id in [*failed, *ok]:
                await finished(api, job_id)
            assert (await counts(api))["failed"] == 3
            answer = await api.client.post("/api/v1/queue/retry-failed", headers=ADMIN)
            assert answer.status_code == 200 and answer.json() == {"retried": 3}
            for job_id in failed:
                again = await finished(api, job_id)
                assert again["status"] == "failed" and again["attempts"] == 2
            assert (await counts(api))["failed"] == 3

            bad = await api.client.post(
                "/api/v1/queue/clean", json={"status": "active", "older_than_s": -1}, headers=ADMIN
            )
            assert bad.status_code == 422
            assert {p["path"] for p in bad.json()["problems"]} == {"$.status", "$.older_than_s"}
            # Nothing ended a day ago: an age keeps them all.
            kept = await api.client.post(
                "/api/v1/queue/clean",
                json={"status": "completed", "older_than_s": 86400},
                headers=ADMIN,
            )
            assert kept.json() == {"removed": 0, "status": "completed"}
            cleaned = await api.client.post(
                "/api/v1/queue/clean", json={"status": "completed"}, headers=ADMIN
            )
            assert cleaned.json() == {"removed": 2, "status": "completed"}
            after = await counts(api)
            assert after["completed"] == 0 and after["failed"] == 3
            for job_id in ok:
                gone = await api.client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN)
                assert gone.status_code == 404


async def test_delete_a_job_but_not_a_running_one(broker_env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            done = await enqueue(api, ALICE, "echo")
            await finished(api, done)
            assert (
                await api.client.delete(f"/api/v1/jobs/{done}", headers=ADMIN)
            ).status_code == 204
            assert (await api.client.get(f"/api/v1/jobs/{done}", headers=ALICE)).status_code == 404
            events = await api.client.get(f"/api/v1/jobs/{done}/events", headers=ADMIN)
            assert events.status_code == 404
            missing = await api.client.delete(f"/api/v1/jobs/{done}", headers=ADMIN)
            assert missing.status_code == 404

            slow = await enqueue(api, ALICE, "slow")

            async def running() -> bool:
                job = await api.client.get(f"/api/v1/jobs/{slow}", headers=ADMIN)
                return bool(job.json()["status"] == "active")

            await wait_until(running)
            refused = await api.client.delete(f"/api/v1/jobs/{slow}", headers=ADMIN)
            assert refused.status_code == 409
            assert "Cancel it first" in refused.json()["message"]
            await api.client.post(f"/api/v1/jobs/{slow}/cancel", headers=ADMIN)
            assert (await finished(api, slow))["status"] == "cancelled"
            assert (
                await api.client.delete(f"/api/v1/jobs/{slow}", headers=ADMIN)
            ).status_code == 204


async def test_promote_a_delayed_job(broker_env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            later = await enqueue(api, ALICE, "echo", delay_s=3600)
            promoted = await api.client.post(f"/api/v1/jobs/{later}/promote", headers=ADMIN)
            assert promoted.status_code == 200, promoted.text
            assert promoted.json()["status"] in ("waiting", "active", "completed")
            assert (await finished(api, later))["status"] == "completed"
            again = await api.client.post(f"/api/v1/jobs/{later}/promote", headers=ADMIN)
            assert again.status_code == 409 and "only a delayed job" in again.json()["message"]


async def test_traceback_for_admin_keys_only(broker_env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            job_id = await enqueue(api, ALICE, "boom")
            job = await finished(api, job_id)
            trace = job["error"]["traceback"]
            assert "Traceback (most recent call last)" in trace and "kaput" in trace
            assert job["error"]["node"] == "b"
            paths = [f"/api/v1/jobs/{job_id}", "/api/v1/jobs?status=failed", "/api/v1/jobs"]
            for path in paths:
                mine = await api.client.get(path, headers=ALICE)
                assert mine.status_code == 200 and "kaput" in mine.text, path
                # The error's keys, not the text: the queue's name (on Redis, this
                # test's name) would read as "traceback" too.
                body = mine.json()
                errors = [j["error"] for j in body["jobs"]] if "jobs" in body else [body["error"]]
                assert all("traceback" not in e for e in errors), path
                assert "Traceback" not in mine.text, path
            admin_list = await api.client.get("/api/v1/jobs?status=failed", headers=ADMIN)
            assert admin_list.json()["jobs"][0]["error"]["traceback"] == trace
            # Cancel and retry answers show the job too: no traceback for its owner.
            retried = await api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=ALICE)
            assert retried.status_code == 202 and "Traceback" not in retried.text

            # A huge one is cut to its end, which names the error.
            huge = {
                "nodes": [{"id": "b", "type": "boom", "params": {"message": "x" * 40_000 + "END"}}],
                "output": "b",
            }
            put = await api.client.put("/api/v1/flows/huge", json=huge, headers=ADMIN)
            assert put.status_code == 200, put.text
            big = await finished(api, await enqueue(api, ADMIN, "huge"))
            trace = big["error"]["traceback"]
            assert trace.rstrip().endswith("END")
            assert (
                len(trace) <= TRACEBACK_MAX_CHARS + 60
                and "characters of the traceback cut" in trace
            )


def test_bounded_traceback_keeps_the_end() -> None:
    assert bounded_traceback("short") == "short"
    text = "a" * 100 + "b" * TRACEBACK_MAX_CHARS
    cut = bounded_traceback(text)
    assert cut.endswith("b" * TRACEBACK_MAX_CHARS) and "a" not in cut.split("\n", 1)[1]
    assert cut.startswith("[100 characters of the traceback cut]")


async def test_retry_keeps_the_first_runs_events(broker_env: dict[str, str]) -> None:
    with trio.fail_after(30):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            job_id = await enqueue(api, ALICE, "boom")
            await finished(api, job_id)
            await api.client.post(f"/api/v1/jobs/{job_id}/retry", headers=ALICE)
            job = await finished(api, job_id)
            assert job["attempts"] == 2 and job["max_attempts"] == 2
            # A late client replays both runs; the stream ends with the second's error.
            stream = await api.client.get(f"/api/v1/jobs/{job_id}/events", headers=ALICE)
            events, _ = parse_sse(stream.content)
            names = [e.name for e in events]
            assert names.count("started") == 2 and names.count("error") == 2
            assert names[names.index("error") + 1] == "retried" and names[-1] == "error"
            retried = events[names.index("retried")]
            assert retried.data == {"attempt": 2}


async def test_a_non_admin_key_sees_no_queue_wide_figures(broker_env: dict[str, str]) -> None:
    with trio.fail_after(20):
        async with open_api(keys=keyring(), environ=broker_env) as api:
            await finished(api, await enqueue(api, BOB, "echo"))
            mine = await api.client.get("/api/v1/queue", headers=ALICE)
            assert mine.status_code == 200
            queue = mine.json()
            assert queue["counts"] is None and queue["paused"] is False
            [worker] = queue["workers"]
            assert worker["jobs_held"] is None and worker["ready"] is True
            admin = (await api.client.get("/api/v1/queue", headers=ADMIN)).json()
            assert admin["counts"]["completed"] == 1
            assert isinstance(admin["workers"][0]["jobs_held"], int)

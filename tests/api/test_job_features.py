"""Priorities, delays (delay_s, run_at) and progress through the HTTP API, on both brokers.

Real sockets, a real worker in the test's nursery; every wait under fail_after.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import trio

from tests.api.conftest import ADMIN_KEY, Api, bearer, keyring, open_api
from tests.api.sse import COMMENT, EVENT, RETRY


@pytest.fixture(params=["memory", "redis"])
def environ(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "memory":
        return {}
    return {
        "REDIS_URL": request.getfixturevalue("redis_url"),
        "QUEUE_NAME": request.getfixturevalue("queue_name"),
    }


async def _post(api: Api, body: dict[str, Any]) -> Any:
    response = await api.client.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


async def _job(api: Api, job_id: str) -> Any:
    response = await api.client.get(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_bad_priorities_and_times_name_their_path() -> None:
    future_ms = (time.time() + 60) * 1000  # milliseconds by mistake: centuries ahead
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"priority": 1001}, "$.priority", "must be from -1000 to 1000"),
        ({"priority": 1.5}, "$.priority", "expected an integer"),
        ({"priority": True}, "$.priority", "expected an integer"),
        ({"run_at": "tomorrow"}, "$.run_at", "expected unix seconds or an ISO-8601 time"),
        ({"run_at": "2030-01-01T00:00:00"}, "$.run_at", 'add its offset ("Z" for UTC'),
        ({"run_at": future_ms}, "$.run_at", "at most 365 days ahead (unix time in seconds"),
        ({"run_at": [1]}, "$.run_at", "expected unix seconds or an ISO-8601 time"),
        ({"run_at": time.time() + 5, "delay_s": 5}, "$.run_at", "give delay_s or run_at"),
    ]
    with trio.fail_after(15):
        async with open_api(worker=False) as api:
            for extra, path, message in cases:
                response = await api.client.post("/api/v1/jobs", json={"flow": "echo", **extra})
                assert response.status_code == 422, (extra, response.text)
                problems = response.json()["problems"]
                assert [p["path"] for p in problems] == [path], (extra, problems)
                assert message in problems[0]["message"], (extra, problems)
            # In a bulk request, the path names the job.
            response = await api.client.post(
                "/api/v1/jobs",
                json={"jobs": [{"flow": "echo"}, {"flow": "echo", "priority": "high"}]},
            )
            assert response.status_code == 422
            assert [p["path"] for p in response.json()["problems"]] == ["$.jobs[1].priority"]
            for body, path in (
                ({"question": "q", "priority": 5000}, "$.priority"),
                (
                    {"question": "q", "overrideConfig": {"priority": "x"}},
                    "$.overrideConfig.priority",
                ),
            ):
                response = await api.client.post("/api/v1/prediction/echo", json=body)
                assert response.status_code == 422, response.text
                assert [p["path"] for p in response.json()["problems"]] == [path]


async def test_priorities_order_the_queue(environ: dict[str, str]) -> None:
    with trio.fail_after(15):
        async with open_api(worker=False, environ=environ) as api:
            plain = await _post(api, {"flow": "echo"})
            flow_default = await _post(api, {"flow": "progress"})  # the flow says 7
            own = await _post(api, {"flow": "progress", "priority": -2})
            urgent = await _post(api, {"flow": "echo", "priority": 100})
            jobs = {j["id"]: await _job(api, j["id"]) for j in (plain, flow_default, own, urgent)}
            assert [j["priority"] for j in jobs.values()] == [0, 7, -2, 100]
            assert all(j["progress"] is None for j in jobs.values())
            listed = await api.client.get("/api/v1/jobs", params={"status": "waiting"})
            # Last to run first.
            assert [j["id"] for j in listed.json()["jobs"]] == [
                own["id"],
                plain["id"],
                flow_default["id"],
                urgent["id"],
            ]
            metrics = set((await api.client.get("/metrics")).text.splitlines())
            queue = api.config.queue.name
            for sign, n in (("positive", 2), ("zero", 1), ("negative", 1)):
                assert f'flowqd_queue_waiting{{priority="{sign}",queue="{queue}"}} {n}' in metrics
            claimed = await api.broker.work.claim("w", 10, lock_ttl_s=30, block_s=0)
            assert [c.job.id for c in claimed] == [
                urgent["id"],
                flow_default["id"],
                plain["id"],
                own["id"],
            ]


async def test_a_prediction_carries_its_priority(environ: dict[str, str]) -> None:
    with trio.fail_after(20):
        async with open_api(environ=environ) as api:
            for body, expected in (
                ({"question": "a", "priority": 3}, 3),
                ({"question": "b", "overrideConfig": {"priority": -4}}, -4),
                ({"question": "c", "priority": 9, "overrideConfig": {"priority": 1}}, 9),
                ({"question": "d"}, 0),
            ):
                response = await api.client.post("/api/v1/prediction/echo", json=body)
                assert response.status_code == 200, response.text
                job = await _job(api, response.headers["X-Flowqd-Job-Id"])
                assert job["priority"] == expected and job["status"] == "completed"


async def test_delayed_jobs_run_no_earlier_than_asked(environ: dict[str, str]) -> None:
    q = {"question": "q"}
    with trio.fail_after(20):
        async with open_api(environ=environ, keys=keyring()) as api:
            api.client.headers.update(bearer(ADMIN_KEY))
            at = time.time() + 0.6
            iso = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
            by_number = await _post(api, {"flow": "echo", "run_at": at, "inputs": q})
            by_text = await _post(api, {"flow": "echo", "run_at": iso, "inputs": q})
            by_delay = await _post(api, {"flow": "echo", "delay_s": 0.6, "inputs": q})
            past = await _post(api, {"flow": "echo", "run_at": time.time() - 3600, "inputs": q})
            later = await _post(api, {"flow": "echo", "run_at": time.time() + 86400, "inputs": q})
            assert [j["status"] for j in (by_number, by_text, by_delay, past, later)] == [
                "delayed",
                "delayed",
                "delayed",
                "waiting",  # a time past runs now
                "delayed",
            ]
            # The dashboard's "Run now": a run_at job is a delayed job like any.
            promoted = await api.client.post(f"/api/v1/jobs/{later['id']}/promote")
            assert promoted.status_code == 200, promoted.text
            for job in (by_number, by_text, by_delay, past, later):
                # The event stream ends with the job's terminal event.
                stream = await api.client.get(f"/api/v1/jobs/{job['id']}/events")
                assert stream.status_code == 200
                done = await _job(api, job["id"])
                assert done["status"] == "completed", done
                if job is not past and job is not later:
                    # by_delay was sent after ``at`` was taken: due later still.
                    assert done["started_at"] >= at - 0.002  # stamps are whole ms


async def test_progress_reaches_an_sse_client(environ: dict[str, str]) -> None:
    with trio.fail_after(20):
        async with open_api(environ=environ) as api:
            job_id = (await _post(api, {"flow": "progress"}))["id"]
            seen: list[tuple[str, Any]] = []
            buffer = b""
            position = len(RETRY)
            async with api.client.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
                assert response.status_code == 200
                async for chunk in response.aiter_bytes():
                    buffer += chunk
                    assert buffer.startswith(RETRY[: len(buffer)])
                    while match := EVENT.match(buffer, position) or COMMENT.match(buffer, position):
                        position = match.end()
                        if match.re is COMMENT:
                            continue
                        name, data = match[2].decode(), orjson.loads(match[3])
                        seen.append((name, data))
                        if name == "progress" and data == 0.5:
                            # Live: the job runs on, and its record says how far it is.
                            job = await _job(api, job_id)
                            assert job["status"] == "active" and job["progress"] == 0.5
            assert position == len(buffer)
            names = [name for name, _ in seen]
            assert [d for n, d in seen if n == "progress"] == [0.5, {"done": 2, "of": 2}]
            assert names.index("progress") < names.index("end") == len(names) - 1
            job = await _job(api, job_id)
            assert job["status"] == "completed" and job["progress"] == {"done": 2, "of": 2}

"""Flows CRUD, credentials (names only, values never shown), queue counts and pause/resume."""

from __future__ import annotations

import logging
import os
import socket

import pytest
import trio

from tests.api.conftest import ADMIN_KEY, ALICE_KEY, bearer, keyring, open_api
from tests.api.sse import parse_sse

SECRET = "sk-very-secret-value"


async def test_flows_crud_with_versions() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            flow = {"nodes": [{"id": "e", "type": "echo"}], "output": "e"}
            created = await api.client.put("/api/v1/flows/mine", json=flow)
            assert created.status_code == 200
            assert created.json() == {"id": "mine", "version": 1, "location": "/api/v1/flows/mine"}
            again = await api.client.put("/api/v1/flows/mine", json={"id": "mine", **flow})
            assert again.json()["version"] == 1  # unchanged document, same version
            changed = {**flow, "description": "v2"}
            assert (await api.client.put("/api/v1/flows/mine", json=changed)).json()["version"] == 2
            listed = (await api.client.get("/api/v1/flows")).json()["flows"]
            assert {"id": "mine", "version": 2} in listed
            got = (await api.client.get("/api/v1/flows/mine")).json()
            assert got["version"] == 2 and got["flow"]["description"] == "v2"
            old = (await api.client.get("/api/v1/flows/mine", params={"version": "1"})).json()
            assert old["version"] == 1 and "description" not in old["flow"]
            assert (await api.client.delete("/api/v1/flows/mine")).status_code == 204
            assert (await api.client.get("/api/v1/flows/mine")).status_code == 404
            assert (await api.client.delete("/api/v1/flows/mine")).status_code == 404
            assert (
                await api.client.get("/api/v1/flows/mine", params={"version": "x"})
            ).status_code == 400


async def test_invalid_flow_is_422_listing_every_problem_with_its_path() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.put(
                "/api/v1/flows/bad",
                json={
                    "nodes": [
                        {"id": "a", "type": "nope"},
                        {"id": "b", "type": "delay", "params": {"ms": "soon"}},
                        {"id": "a", "type": "echo"},
                    ],
                    "output": "zzz",
                    "colour": "red",
                },
            )
            assert response.status_code == 422
            body = response.json()
            paths = {p["path"] for p in body["problems"]}
            assert {
                "$.colour",
                "$.nodes[0].type",
                "$.nodes[1].params.ms",
                "$.nodes[2].id",
                "$.output",
            } <= paths, body["problems"]
            assert body["message"].startswith("invalid flow:")
            mismatch = await api.client.put(
                "/api/v1/flows/bad",
                json={"id": "other", "nodes": [{"id": "e", "type": "echo"}], "output": "e"},
            )
            assert mismatch.status_code == 422
            assert mismatch.json()["problems"][0]["path"] == "$.id"


async def test_credentials_round_trip_and_values_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(15):
        async with open_api() as api:
            stored = await api.client.put("/api/v1/credentials/api-token", json={"value": SECRET})
            assert stored.status_code == 204 and stored.content == b""
            listed = await api.client.get("/api/v1/credentials")
            assert listed.json() == {"credentials": ["api-token"]}
            # The worker opens it (the flow answers the value's length, never the value).
            answer = await api.client.post("/api/v1/prediction/secret", json={"question": "q"})
            assert answer.status_code == 200 and answer.json()["text"] == str(len(SECRET))
            job_id = answer.json()["executionId"]
            job = await api.client.get(f"/api/v1/jobs/{job_id}")
            events = await api.client.get(f"/api/v1/jobs/{job_id}/events")
            parse_sse(events.content)
            wrong_type = await api.client.put("/api/v1/credentials/x", json={"value": 12345})
            assert wrong_type.status_code == 422 and "12345" not in wrong_type.text
            bad_name = await api.client.put("/api/v1/credentials/a%20b", json={"value": "v"})
            assert bad_name.status_code == 422
            for response in (stored, listed, answer, job, events, wrong_type):
                assert SECRET not in response.text
            assert SECRET not in caplog.text
            assert (await api.client.delete("/api/v1/credentials/api-token")).status_code == 204
            assert (await api.client.delete("/api/v1/credentials/api-token")).status_code == 404
            assert (await api.client.get("/api/v1/credentials")).json() == {"credentials": []}


async def test_a_worker_with_another_secret_key_fails_the_job_saying_so() -> None:
    with trio.fail_after(15):
        async with open_api(worker_secret="not-the-same-key") as api:
            await api.client.put("/api/v1/credentials/api-token", json={"value": SECRET})
            answer = await api.client.post("/api/v1/prediction/secret", json={"question": "q"})
            assert answer.status_code == 500
            message = answer.json()["message"]
            assert "main and workers must share security.secret_key" in message
            assert SECRET not in answer.text


async def test_queue_counts_workers_pause_and_resume() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            assert (await api.client.post("/api/v1/queue/pause")).json() == {"paused": True}
            job_id = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "q"}}
                )
            ).json()["id"]
            queue = (await api.client.get("/api/v1/queue")).json()
            assert queue["paused"] is True and queue["counts"]["waiting"] == 1
            assert queue["name"] == "flowqd-queue"
            [worker] = queue["workers"]
            assert worker["concurrency"] == 10000
            assert (await api.client.post("/api/v1/queue/resume")).json() == {"paused": False}
            events = parse_sse((await api.client.get(f"/api/v1/jobs/{job_id}/events")).content)
            assert events[0][-1].name == "end"
            queue = (await api.client.get("/api/v1/queue")).json()
            assert queue["counts"]["waiting"] == 0 and queue["counts"]["completed"] == 1


async def test_what_a_non_admin_key_sees_of_flows_workers_and_jobs() -> None:
    # Any key may run any flow: it may list flows and read what a flow needs
    # (its inputs), not the document, which can hold URLs, prompts and
    # credential names. Workers' host and pid are for operators.
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            admin, alice = bearer(ADMIN_KEY), bearer(ALICE_KEY)
            listed = await api.client.get("/api/v1/flows", headers=alice)
            assert {"id": "topic", "version": 1} in listed.json()["flows"]
            seen = (await api.client.get("/api/v1/flows/topic", headers=alice)).json()
            assert seen == {"id": "topic", "version": 1, "inputs": ["topic"]}
            full = (await api.client.get("/api/v1/flows/topic", headers=admin)).json()
            assert full["flow"]["nodes"][0]["params"] == {"template": "{topic}"}
            assert full["inputs"] == ["topic"]

            host, pid = socket.gethostname(), os.getpid()
            [worker] = (await api.client.get("/api/v1/queue", headers=admin)).json()["workers"]
            assert (worker["host"], worker["pid"]) == (host, pid)
            queue = await api.client.get("/api/v1/queue", headers=alice)
            [anonymous] = queue.json()["workers"]
            assert anonymous["id"] == "worker-1" and anonymous["ready"] is True
            assert set(anonymous) == {
                "id",
                "ready",
                "jobs_held",
                "concurrency",
                "started_at",
                "last_seen",
            }
            assert host not in queue.text

            job_id = (
                await api.client.post(
                    "/api/v1/jobs",
                    headers=alice,
                    json={"flow": "echo", "inputs": {"question": "q"}},
                )
            ).json()["id"]
            parse_sse(
                (await api.client.get(f"/api/v1/jobs/{job_id}/events", headers=alice)).content
            )
            mine = await api.client.get(f"/api/v1/jobs/{job_id}", headers=alice)
            assert mine.json()["worker"] is None and host not in mine.text
            listing = await api.client.get("/api/v1/jobs", headers=alice)
            assert [j["worker"] for j in listing.json()["jobs"]] == [None]
            as_admin = (await api.client.get(f"/api/v1/jobs/{job_id}", headers=admin)).json()
            assert as_admin["worker"].startswith(f"{host}:{pid}:")

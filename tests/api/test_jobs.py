"""Jobs API: enqueue (single and bulk), read, list, cancel; SSE events with resume and replay."""

from __future__ import annotations

import re
from typing import Any

import trio

from tests.api.conftest import (
    ADMIN_KEY,
    ALICE_KEY,
    BOB_KEY,
    Api,
    bearer,
    keyring,
    open_api,
    raw_request,
)
from tests.api.sse import parse_sse


async def events_of(
    api: Api, job_id: str, params: dict[str, str] | None = None, **headers: str
) -> Any:
    response = await api.client.get(f"/api/v1/jobs/{job_id}/events", headers=headers, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    return parse_sse(response.content)


async def test_enqueue_is_202_with_location_and_the_job_runs() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/jobs", json={"flow": "greet", "inputs": {"question": "you"}}
            )
            assert response.status_code == 202
            body = response.json()
            assert response.headers["location"] == f"/api/v1/jobs/{body['id']}"
            assert body["status"] == "waiting"
            events, _ = await events_of(api, body["id"])
            assert events[0].name == "started" and events[-1].name == "end"
            assert events[-1].data == "Hello you"
            job = (await api.client.get(body["location"])).json()
            assert job["status"] == "completed" and job["result"] == "Hello you"
            assert job["attempts"] == 1 and job["duration_s"] >= 0
            assert [n["nodeId"] for n in job["nodes"]] == ["start", "hello"]
            assert job["nodes"][1]["input"] == {"q": "you"}


async def test_bulk_enqueue_and_every_problem_with_its_path() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/jobs",
                json={
                    "jobs": [
                        {"flow": "echo", "inputs": {"question": "a"}},
                        {"flow": "echo", "inputs": {"question": "b"}, "job_id": "mine-1"},
                    ]
                },
            )
            assert response.status_code == 202
            ids = [j["id"] for j in response.json()["jobs"]]
            assert len(ids) == 2 and ids[1] == "mine-1"
            for job_id, question in zip(ids, "ab", strict=True):
                events, _ = await events_of(api, job_id)
                assert events[-1].data == question
            bad = await api.client.post(
                "/api/v1/jobs",
                json={
                    "jobs": [
                        {"flow": "echo"},
                        {"inputs": []},
                        {"flow": 3, "delay_s": -1, "extra": 1},
                        {"flow": "echo", "max_attempts": 0, "timeout_s": 0, "job_id": "a b"},
                    ]
                },
            )
            assert bad.status_code == 422
            assert [p["path"] for p in bad.json()["problems"]] == [
                "$.jobs[1].flow",
                "$.jobs[1].inputs",
                "$.jobs[2].extra",
                "$.jobs[2].flow",
                "$.jobs[2].delay_s",
                "$.jobs[3].job_id",
                "$.jobs[3].max_attempts",
                "$.jobs[3].timeout_s",
            ]
            missing = await api.client.post(
                "/api/v1/jobs", json={"jobs": [{"flow": "echo"}, {"flow": "nope"}]}
            )
            assert missing.status_code == 404
            assert missing.json()["problems"][0]["path"] == "$.jobs[1].flow"
            inputs = await api.client.post("/api/v1/jobs", json={"flow": "topic"})
            assert inputs.status_code == 422
            assert inputs.json()["problems"][0]["path"] == "$.inputs.topic"


async def test_same_job_id_twice_makes_one_job() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            for _ in range(2):
                response = await api.client.post(
                    "/api/v1/jobs",
                    json={"flow": "echo", "inputs": {"question": "x"}, "job_id": "once"},
                )
                assert response.json()["id"] == "once"
            await events_of(api, "once")
            listing = (await api.client.get("/api/v1/jobs")).json()["jobs"]
            assert [j["id"] for j in listing] == ["once"]


async def test_resume_with_last_event_id_and_replay_after_the_end() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            job_id = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "tokens", "inputs": {"question": "q"}}
                )
            ).json()["id"]
            full, _ = await events_of(api, job_id)
            names = [e.name for e in full]
            assert names == ["started", "node_start", "token", "token", "token", "node_end", "end"]
            assert len({e.id for e in full}) == len(full)
            # A client that connects after the end gets the same whole stream.
            replay, _ = await events_of(api, job_id)
            assert replay == full
            for cut in range(len(full)):
                resumed, _ = await events_of(api, job_id, **{"Last-Event-ID": full[cut].id})
                assert resumed == full[cut + 1 :]
            query, _ = await events_of(api, job_id, {"after": full[2].id})
            assert query == full[3:]


async def test_resume_while_the_job_runs() -> None:
    with trio.fail_after(20):
        async with open_api("server.heartbeat_s=0.1") as api:
            job_id = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "short", "inputs": {"question": "q"}}
                )
            ).json()["id"]
            # Read the live stream until the node started, then drop it.
            async with raw_request(api.url, "GET", f"/api/v1/jobs/{job_id}/events") as stream:
                seen = b""
                while b"event: node_start" not in seen:
                    seen += await stream.receive_some(65536)
            match = re.search(rb"id: (\S+)\nevent: started\n", seen)
            assert match is not None
            last = match[1].decode()
            rest, comments = await events_of(api, job_id, **{"Last-Event-ID": last})
            assert [e.name for e in rest] == ["node_start", "node_end", "end"]
            assert b": keep-alive\n\n" in comments


async def test_bad_last_event_id_is_400_and_unknown_job_404() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            job_id = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "x"}}
                )
            ).json()["id"]
            bad = await api.client.get(
                f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"}
            )
            assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["message"]
            for path in ("/api/v1/jobs/nope", "/api/v1/jobs/nope/events"):
                missing = await api.client.get(path)
                assert missing.status_code == 404 and missing.json()["success"] is False
            assert (await api.client.post("/api/v1/jobs/nope/cancel")).status_code == 404


async def test_cancel_running_waiting_and_finished_jobs() -> None:
    with trio.fail_after(20):
        async with open_api() as api:
            running = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "slow", "inputs": {"question": "q"}}
                )
            ).json()["id"]
            async with api.client.stream("GET", f"/api/v1/jobs/{running}/events") as response:
                seen = b""
                stream = response.aiter_raw()
                while b"event: node_start" not in seen:
                    seen += await stream.__anext__()
                answer = await api.client.post(f"/api/v1/jobs/{running}/cancel")
                assert answer.status_code == 202 and answer.json()["cancel_requested"]
                async for chunk in stream:
                    seen += chunk
            events, _ = parse_sse(seen)
            assert events[-1].name == "cancelled"
            assert (await api.client.get(f"/api/v1/jobs/{running}")).json()["status"] == "cancelled"

            assert (await api.client.post("/api/v1/queue/pause")).json() == {"paused": True}
            waiting = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "q"}}
                )
            ).json()["id"]
            answer = await api.client.post(f"/api/v1/jobs/{waiting}/cancel")
            assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
            assert (await api.client.post("/api/v1/queue/resume")).json() == {"paused": False}

            done = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "q"}}
                )
            ).json()["id"]
            await events_of(api, done)
            late = await api.client.post(f"/api/v1/jobs/{done}/cancel")
            assert late.status_code == 409 and "already completed" in late.json()["message"]


async def test_event_streams_end_when_shutdown_begins() -> None:
    with trio.fail_after(20):
        async with open_api(graceful_s=60) as api:
            job_id = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "slow", "inputs": {"question": "q"}}
                )
            ).json()["id"]
            async with (
                api.client.stream("GET", f"/api/v1/jobs/{job_id}/events") as events,
                api.client.stream(
                    "POST", "/api/v1/prediction/slow", json={"question": "q", "streaming": True}
                ) as prediction,
            ):
                sse_stream, flowise_stream = events.aiter_raw(), prediction.aiter_raw()
                await sse_stream.__anext__()
                await flowise_stream.__anext__()
                api.shutdown.set()
                # Both end on their own, long before hypercorn's 60 s graceful limit.
                with trio.fail_after(5):
                    async for _ in sse_stream:
                        pass
                    tail = b"".join([chunk async for chunk in flowise_stream])
            assert tail.endswith(b'message:\ndata:{"event":"end","data":"[DONE]"}\n\n')
            assert b"shutting down" in tail


async def test_numbers_out_of_range_are_422_naming_path_and_range() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            cases = [
                ({"delay_s": 1e308}, "$.delay_s", "from 0 to 31536000 seconds (365 days)"),
                ({"delay_s": 10**30}, "$.delay_s", "from 0 to 31536000"),
                (
                    {"timeout_s": 1e308},
                    "$.timeout_s",
                    "greater than 0 to 2592000 seconds (30 days)",
                ),
                ({"max_attempts": 2**63}, "$.max_attempts", "from 1 to 1000"),
                # orjson reads an integer past 64 bits as a float.
                ({"max_attempts": 10**30}, "$.max_attempts", "expected an integer"),
            ]
            for extra, path, wanted in cases:
                for body, where in (
                    ({"flow": "echo", "inputs": {"question": "x"}, **extra}, path),
                    (
                        {"jobs": [{"flow": "echo", "inputs": {"question": "x"}, **extra}]},
                        path.replace("$", "$.jobs[0]"),
                    ),
                ):
                    answer = await api.client.post("/api/v1/jobs", json=body)
                    assert answer.status_code == 422, (body, answer.text)
                    [problem] = answer.json()["problems"]
                    assert problem["path"] == where and wanted in problem["message"], problem
            edge = await api.client.post(
                "/api/v1/jobs",
                json={
                    "flow": "echo",
                    "inputs": {"question": "x"},
                    "delay_s": 31536000,
                    "timeout_s": 2592000,
                    "max_attempts": 1000,
                },
            )
            assert edge.status_code == 202 and edge.json()["status"] == "delayed"
            # Past a double: the decoder's 400, not a 500.
            inf = await api.client.post(
                "/api/v1/jobs",
                content=b'{"flow": "echo", "delay_s": 1e400}',
                headers={"Content-Type": "application/json"},
            )
            assert inf.status_code == 400 and "malformed JSON" in inf.json()["message"]
            for query in ("limit=\u00b2", "offset=" + "9" * 5000, "limit=1001"):
                bad = await api.client.get(f"/api/v1/jobs?{query}")
                assert bad.status_code == 400 and "whole number" in bad.json()["message"]
            version = await api.client.get("/api/v1/flows/echo?version=\u00b2")
            assert version.status_code == 400


async def test_enqueue_names_the_job_in_a_header() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            response = await api.client.post(
                "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "x"}}
            )
            assert response.status_code == 202
            assert response.headers["x-flowqd-job-id"] == response.json()["id"]


async def test_job_id_of_another_key_is_409_and_reveals_nothing() -> None:
    with trio.fail_after(20):
        async with open_api(keys=keyring()) as api:
            alice, bob = bearer(ALICE_KEY), bearer(BOB_KEY)
            job = {"flow": "slow", "inputs": {"question": "q"}, "job_id": "shared"}
            first = await api.client.post("/api/v1/jobs", json=job, headers=alice)
            assert first.status_code == 202
            # The same key again: the idempotent answer of before.
            again = await api.client.post("/api/v1/jobs", json=job, headers=alice)
            assert again.status_code == 202 and again.json()["id"] == "shared"
            squat = await api.client.post("/api/v1/jobs", json=job, headers=bob)
            assert squat.status_code == 409
            body = squat.json()
            assert body["problems"] == [
                {"path": "$.job_id", "message": "is taken by another job: pick another job_id"}
            ]
            text = squat.text
            for secret in ("alice", "waiting", "active", "slow", "/api/v1/jobs/shared"):
                assert secret not in text
            assert "x-flowqd-job-id" not in squat.headers and "location" not in squat.headers
            # A bulk with one taken id enqueues none of its jobs.
            bulk = await api.client.post(
                "/api/v1/jobs",
                headers=bob,
                json={
                    "jobs": [{"flow": "echo", "inputs": {"question": "a"}, "job_id": "bob-1"}, job]
                },
            )
            assert bulk.status_code == 409
            assert [p["path"] for p in bulk.json()["problems"]] == ["$.jobs[1].job_id"]
            assert "no job of this request was enqueued" in bulk.json()["message"]
            admin = bearer(ADMIN_KEY)
            assert (await api.client.get("/api/v1/jobs/bob-1", headers=admin)).status_code == 404
            shared = (await api.client.get("/api/v1/jobs/shared", headers=admin)).json()
            assert shared["owner"] == "alice" and shared["inputs"] == {"question": "q"}
            assert (
                await api.client.post("/api/v1/jobs/shared/cancel", headers=alice)
            ).status_code == 202


async def test_events_with_a_cursor_past_the_stream_end_with_the_job() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            job_id = (
                await api.client.post(
                    "/api/v1/jobs", json={"flow": "short", "inputs": {"question": "q"}}
                )
            ).json()["id"]
            ahead = f"{2**64 - 1}-0"
            # Running: the stream used to wait for ever for ids past this one.
            events, _ = await events_of(api, job_id, **{"Last-Event-ID": ahead})
            assert events[-1].name == "end" and events[-1].data == "q"
            # Finished: the replay ends at once.
            done, _ = await events_of(api, job_id, **{"Last-Event-ID": ahead})
            assert done == []
            too_big = await api.client.get(
                f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": f"{2**64}-0"}
            )
            assert too_big.status_code == 400
            for bad in (f"{2**64}-0", "1-" + "9" * 30, "\u00b2-0"):
                answer = await api.client.get(
                    f"/api/v1/jobs/{job_id}/events", params={"after": bad}
                )
                assert answer.status_code == 400, bad
                assert "below 2**64" in answer.json()["message"]

"""The API on the Redis broker: in one process, and as separate main and worker processes."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from flowqd.config import RedisConfig
from flowqd.redis import open_redis
from tests.api.conftest import (
    ADMIN_KEY,
    ALICE_KEY,
    BOB_KEY,
    FLOWS,
    bearer,
    keyring,
    open_api,
)
from tests.api.rawhttp import RawConnection
from tests.api.sse import parse_sse
from tests.api.test_predictions import parse_flowise_stream
from tests.daemonproc import Daemon, start_daemon
from tests.redisproc import RedisServer

WAITING = 2000


def redis_env(url: str, queue: str) -> dict[str, str]:
    return {"REDIS_URL": url, "QUEUE_NAME": queue}


async def test_predictions_and_resumable_events_on_redis(redis_url: str, queue_name: str) -> None:
    with trio.fail_after(30):
        async with open_api(environ=redis_env(redis_url, queue_name)) as api:
            answer = await api.client.post("/api/v1/prediction/greet", json={"question": "r"})
            assert answer.status_code == 200 and answer.json()["text"] == "Hello r"
            streamed = await api.client.post(
                "/api/v1/prediction/tokens", json={"question": "r", "streaming": True}
            )
            events = parse_flowise_stream(streamed.content)
            assert [d for n, d in events if n == "token"] == ["Hel", "lo ", "r"]
            assert events[-1] == ("end", "[DONE]")
            job_id = answer.json()["executionId"]
            full, _ = parse_sse((await api.client.get(f"/api/v1/jobs/{job_id}/events")).content)
            assert full[-1].name == "end" and full[-1].data == "Hello r"
            resumed, _ = parse_sse(
                (
                    await api.client.get(
                        f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": full[1].id}
                    )
                ).content
            )
            assert resumed == full[2:]


async def test_deadline_then_the_job_finishes_on_redis(redis_url: str, queue_name: str) -> None:
    with trio.fail_after(30):
        async with open_api(
            "server.prediction_timeout_s=0.3", environ=redis_env(redis_url, queue_name)
        ) as api:
            late = await api.client.post("/api/v1/prediction/short", json={"question": "z"})
            assert late.status_code == 504
            job_id = late.json()["jobId"]
            events, _ = parse_sse((await api.client.get(f"/api/v1/jobs/{job_id}/events")).content)
            assert (events[-1].name, events[-1].data) == ("end", "z")


async def test_hung_redis_answers_503_within_the_broker_timeout(
    own_redis_server: RedisServer, queue_name: str
) -> None:
    with trio.fail_after(60):
        async with open_api(environ=redis_env(own_redis_server.url, queue_name)) as api:
            assert own_redis_server.proc is not None
            pid = own_redis_server.proc.pid
            os.kill(pid, signal.SIGSTOP)  # Redis accepts connections but never answers
            try:
                for method, path, body in [
                    ("POST", "/api/v1/prediction/echo", {"question": "q"}),
                    ("POST", "/api/v1/jobs", {"flow": "echo"}),
                    ("GET", "/api/v1/queue", None),
                ]:
                    with trio.fail_after(3):  # server.broker_timeout_s is 1 s
                        response = await api.client.request(method, path, json=body)
                    assert response.status_code == 503, response.text
                    assert "redis.url" in response.json()["message"]
            finally:
                os.kill(pid, signal.SIGCONT)
            # Redis answers again: so does the API, with no restart.
            ok = await api.client.post("/api/v1/prediction/echo", json={"question": "back"})
            assert ok.status_code == 200 and ok.json()["text"] == "back"


@asynccontextmanager
async def open_cluster(
    url: str, queue: str, tmp_path: Path, *main_args: str
) -> AsyncIterator[tuple[Daemon, Daemon]]:
    flows = tmp_path / "flows"
    flows.mkdir()
    for doc in FLOWS[:2]:
        (flows / f"{doc['id']}.json").write_bytes(orjson.dumps(doc))
    env = redis_env(url, queue)
    async with (
        start_daemon(
            ["--role", "main", "--set", f"flows.paths={flows}", *main_args],
            env=env,
            cwd=str(tmp_path),
        ) as main,
        start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)) as worker,
    ):
        yield main, worker


async def redis_clients(url: str) -> dict[str, int]:
    async with open_redis(RedisConfig(url=url), name="flowqd-test") as redis:
        listing = (await redis.execute(b"CLIENT", b"LIST")).decode()
    counts: dict[str, int] = {}
    for name in re.findall(r" name=(\S*) ", listing):
        # By role: flowqd-main-HOST-PID and its -claim connections count as flowqd-main.
        name = re.sub(r"^(flowqd-(?:main|worker|all))-.*", r"\1", name)
        counts[name] = counts.get(name, 0) + 1
    return counts


async def metric(client: httpx.AsyncClient, base: str, name: str) -> float:
    text = (await client.get(f"{base}/metrics")).text
    match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert match is not None, name
    return float(match[1])


async def test_main_and_worker_processes_answer_predictions_and_streams(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with (
            open_cluster(redis_server.url, queue_name, tmp_path) as (main, _worker),
            httpx.AsyncClient(base_url=main.api, timeout=20) as client,
        ):
            answer = await client.post("/api/v1/prediction/greet", json={"question": "p"})
            assert answer.status_code == 200 and answer.json()["text"] == "Hello p"
            streamed = await client.post(
                "/api/v1/prediction/echo", json={"question": "s", "streaming": True}
            )
            events = parse_flowise_stream(streamed.content)
            assert ("token", "s") in events and events[-1] == ("end", "[DONE]")


async def waiting_at_least(client: httpx.AsyncClient, base: str, n: int) -> None:
    # Another process's figure: nothing to wait on but its /metrics (the
    # caller's fail_after bounds this).
    while True:
        if await metric(client, base, "flowqd_api_predictions_waiting") >= n:
            return
        await trio.sleep(0.05)


@pytest.mark.slow
async def test_2000_waiting_predictions_hold_few_redis_connections(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    """One main process, 2,000 concurrent waiting predictions: the Redis connections it
    holds stay bounded (pool + event reader + subscription), not one per client."""
    with trio.fail_after(120):
        async with (
            open_cluster(
                redis_server.url, queue_name, tmp_path, "--set", "server.prediction_timeout_s=100"
            ) as (main, _w),
            httpx.AsyncClient(base_url=main.api, timeout=100) as client,
        ):
            assert (await client.post("/api/v1/queue/pause")).status_code == 200
            answers: list[tuple[int, bytes]] = []

            async def predict(i: int) -> None:
                connection = RawConnection.for_url(main.api)
                try:
                    answers.append(
                        await connection.request(
                            "POST", "/api/v1/prediction/echo", {"question": f"q{i}"}
                        )
                    )
                finally:
                    await connection.aclose()

            async with trio.open_nursery() as nursery:
                # In steps, so the listen backlog never overflows (a dropped SYN
                # costs a second of retransmission, not an error).
                for step in range(0, WAITING, 200):
                    for i in range(step, step + 200):
                        nursery.start_soon(predict, i)
                    await waiting_at_least(client, main.api, step + 200)
                clients = await redis_clients(redis_server.url)
                held = clients.get("flowqd-main", 0)
                print(
                    f"\n{WAITING} waiting predictions: main holds {held} Redis "
                    f"connections ({clients})"
                )
                # The pool (redis.max_connections) and the event subscription, at most.
                assert 1 <= held <= RedisConfig().max_connections + 1
                assert (await client.post("/api/v1/queue/resume")).status_code == 200
            assert len(answers) == WAITING
            assert all(status == 200 for status, _ in answers)
            assert sorted(orjson.loads(body)["text"] for _, body in answers) == sorted(
                f"q{i}" for i in range(WAITING)
            )


async def test_job_id_squatting_and_a_cursor_past_the_stream_on_redis(
    redis_url: str, queue_name: str
) -> None:
    with trio.fail_after(30):
        async with open_api(keys=keyring(), environ=redis_env(redis_url, queue_name)) as api:
            alice, bob = bearer(ALICE_KEY), bearer(BOB_KEY)
            job = {"flow": "short", "inputs": {"question": "q"}, "job_id": "shared"}
            assert (
                await api.client.post("/api/v1/jobs", json=job, headers=alice)
            ).status_code == 202
            assert (await api.client.post("/api/v1/jobs", json=job, headers=alice)).json()[
                "id"
            ] == "shared"
            squat = await api.client.post("/api/v1/jobs", json=job, headers=bob)
            assert squat.status_code == 409 and "alice" not in squat.text
            bulk = await api.client.post(
                "/api/v1/jobs",
                headers=bob,
                json={
                    "jobs": [{"flow": "echo", "inputs": {"question": "a"}, "job_id": "bob-1"}, job]
                },
            )
            assert bulk.status_code == 409
            assert [p["path"] for p in bulk.json()["problems"]] == ["$.jobs[1].job_id"]
            assert (
                await api.client.get("/api/v1/jobs/bob-1", headers=bearer(ADMIN_KEY))
            ).status_code == 404
            # Running, resumed from an id past any the stream will get: ends with the job.
            ahead = await api.client.get(
                "/api/v1/jobs/shared/events", headers={**alice, "Last-Event-ID": f"{2**64 - 1}-0"}
            )
            events, _ = parse_sse(ahead.content)
            assert events[-1].name == "end" and events[-1].data == "q"
            too_big = await api.client.get(
                "/api/v1/jobs/shared/events", headers={**alice, "Last-Event-ID": f"{2**64}-0"}
            )
            assert too_big.status_code == 400

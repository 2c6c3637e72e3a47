"""Redis unreachable for 10 s, stopped (connections refused) or frozen (SIGSTOP:
connections accepted, nothing answered, like a network partition).

Flowise hangs every request when Redis is gone (issue #5126). Here each
prediction answers 503 (JSON, Retry-After) within ``server.broker_timeout_s``,
liveness stays 200 while readiness and ``flowqd_broker_up`` say the truth, no
process dies, and once Redis is back the jobs caught in the outage finish and
their waiting clients get answers.
"""

from __future__ import annotations

import signal
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from flowqd.jobs import JobStatus
from tests.daemonproc import Daemon, start_daemon
from tests.faults.helpers import (
    ECHO,
    assert_no_crash,
    delay_flow,
    metric,
    open_observer,
    poll,
    redis_env,
    settings,
    write_flows,
)
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

OUTAGE_S = 10.0
# server.broker_timeout_s is 1 s; the bound leaves room for a loaded CI machine.
BOUND_S = 2.5


async def outage(redis: RedisServer, mode: str, seconds: float) -> None:
    """Take Redis away for ``seconds`` and bring it back with its data."""
    assert redis.proc is not None
    if mode == "frozen":
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            await trio.sleep(seconds)
        finally:
            redis.proc.send_signal(signal.SIGCONT)
    else:
        redis.proc.send_signal(signal.SIGKILL)  # appendfsync always: nothing acknowledged is lost
        await trio.to_thread.run_sync(redis.proc.wait)
        await trio.sleep(seconds)
        await trio.to_thread.run_sync(redis.start)


@pytest.mark.parametrize("mode", ["stopped", "frozen"])
async def test_redis_unreachable_answers_503_fast_tells_the_truth_and_resumes(
    own_redis_server: RedisServer, queue_name: str, tmp_path: Path, mode: str
) -> None:
    env = redis_env(own_redis_server.url, queue_name)
    flows = write_flows(tmp_path / "flows", [ECHO, delay_flow("slow", 2000)])
    main_args = [
        "--role",
        "main",
        *settings(flows__paths=flows, server__prediction_timeout_s=40, worker__shutdown_grace_s=5),
    ]
    worker_args = ["--role", "worker", *settings(worker__lock_ttl_s=30)]
    answers: list[tuple[float, str, httpx.Response]] = []
    during: dict[str, Any] = {}
    caught: list[tuple[int, Any]] = []
    with trio.fail_after(90):
        async with (
            start_daemon(main_args, env=env, cwd=str(tmp_path)) as main,
            start_daemon(worker_args, env=env, cwd=str(tmp_path)) as worker,
        ):
            async with httpx.AsyncClient(base_url=main.api, timeout=60) as client:
                ok = await client.post("/api/v1/prediction/echo", json={"question": "before"})
                assert ok.status_code == 200 and ok.json()["text"] == "before"

                async def caught_in_outage(i: int) -> None:
                    response = await client.post(
                        "/api/v1/prediction/slow", json={"question": f"c{i}"}
                    )
                    caught.append((response.status_code, response.json()))

                async with trio.open_nursery() as nursery:
                    for i in range(5):
                        nursery.start_soon(caught_in_outage, i)
                    await poll(lambda: _running(client, main, 5))
                    outage_done = trio.Event()

                    async def take_redis_away() -> None:
                        await outage(own_redis_server, mode, OUTAGE_S)
                        outage_done.set()

                    nursery.start_soon(take_redis_away)
                    await trio.sleep(0.5)  # Redis is away now
                    during.update(await _health(client, main, worker))
                    async with trio.open_nursery() as probes:
                        # A new prediction every 0.2 s for the whole outage, each timed.
                        while not outage_done.is_set():
                            probes.start_soon(probe, client, outage_done, answers)
                            await trio.sleep(0.2)
                    assert_no_crash(main, worker)
                # Back: readiness first, then everything else, without restarts.
                back = time.monotonic()
                with trio.fail_after(15):
                    await poll(lambda: _ready(client, worker))
                ready_after = time.monotonic() - back
                # Ready means claiming: the claim loop said so before /readyz did.
                await worker.wait_for_log("broker reachable again, taking jobs", seconds=1)
                assert await metric(client, main.api, "flowqd_broker_up") == 1
                again = await client.post("/api/v1/prediction/echo", json={"question": "after"})
                assert again.status_code == 200 and again.json()["text"] == "after"
            async with open_observer(own_redis_server.url, queue_name) as observer:
                counts = await observer.broker.control.counts()
                done = await observer.broker.jobs.list_jobs(JobStatus.COMPLETED, limit=1000)
            assert_no_crash(main, worker)
            for daemon in (main, worker):
                daemon.signal(signal.SIGTERM)
            for daemon in (main, worker):
                assert await daemon.wait(15) == 0, daemon.text()[-3000:]
    # Answers that came before Redis was back: every one a JSON 503.
    answered = [seconds for seconds, status, _ in answers if status != "after"]
    for _seconds, status, response in answers:
        if status == "after":
            continue
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["retry-after"] == "1"
        body = response.json()
        assert "redis.url" in body["message"]
        # A 503 at the enqueue step names the job, which may still run once
        # Redis reads the command; earlier steps fail before a job exists.
        if "jobId" in body:
            assert f"GET /api/v1/jobs/{body['jobId']}" in body["message"]
    print(
        f"\nRedis {mode} {OUTAGE_S:g}s: {len(answered)} predictions answered 503 in "
        f"{min(answered) * 1000:.0f}-{max(answered) * 1000:.0f} ms (median "
        f"{statistics.median(answered) * 1000:.0f} ms); health during: {during}; worker "
        f"ready {ready_after:.2f}s after Redis was back; the 5 predictions caught in the "
        f"outage answered {sorted(status for status, _ in caught)}"
    )
    assert len(answered) >= 10
    assert max(answered) < BOUND_S
    assert during == {
        "healthz": 200,
        "readyz": 503,
        "ready_reason": "broker unreachable",
        "ping": 200,
        "broker_up": 0,
        "queue": 503,
    }
    assert sorted(body.get("text") for _, body in caught) == [f"c{i}" for i in range(5)]
    questions = Counter(j.inputs.get("question") for j in done)
    assert questions["before"] == questions["after"] == 1
    assert all(questions[f"c{i}"] == 1 for i in range(5))
    assert counts[JobStatus.FAILED] == counts[JobStatus.WAITING] == counts[JobStatus.ACTIVE] == 0
    # Predictions answered 503 whose job ran all the same once Redis answered
    # again. None when Redis refused the connection; with a frozen Redis the
    # enqueue sent before the API gave up is executed when Redis resumes (the
    # client was told 503 and may send it again): reported to the lead, see
    # the suite's notes. Here it is a figure, not yet a requirement.
    phantoms = questions["during"]
    print(f"  predictions answered 503 whose job ran later: {phantoms}")
    if mode == "stopped":
        assert phantoms == 0


async def probe(
    client: httpx.AsyncClient,
    outage_done: trio.Event,
    answers: list[tuple[float, str, httpx.Response]],
) -> None:
    started = time.monotonic()
    with trio.fail_after(BOUND_S * 2):  # a hang fails here, not at the test's deadline
        response = await client.post("/api/v1/prediction/echo", json={"question": "during"})
    # One that raced the return of Redis may rightly succeed: not judged.
    answers.append(
        (time.monotonic() - started, "after" if outage_done.is_set() else "during", response)
    )


async def _running(client: httpx.AsyncClient, main: Daemon, n: int) -> bool:
    response = await client.get("/api/v1/queue")
    return bool(response.json()["counts"]["active"] >= n)


async def _ready(client: httpx.AsyncClient, worker: Daemon) -> bool:
    return (await client.get(f"{worker.health}/readyz")).status_code == 200


async def _health(client: httpx.AsyncClient, main: Daemon, worker: Daemon) -> dict[str, Any]:
    """What every health surface says, each answer bounded like the predictions."""
    with trio.fail_after(BOUND_S * 2):
        readyz = await client.get(f"{worker.health}/readyz")
        return {
            "healthz": (await client.get(f"{worker.health}/healthz")).status_code,
            "readyz": readyz.status_code,
            "ready_reason": readyz.json()["reason"].split(":")[0],
            "ping": (await client.get("/api/v1/ping")).status_code,
            "broker_up": await metric(client, main.api, "flowqd_broker_up"),
            "queue": (await client.get("/api/v1/queue")).status_code,
        }

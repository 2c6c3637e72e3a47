"""No worker at all: predictions answer at their deadline with the job id (504
for JSON, an error event for a stream), and the jobs run when a worker appears.

Flowise waits with no deadline when no worker runs (issue #5126).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.api.sse import parse_sse
from tests.api.test_predictions import parse_flowise_stream
from tests.daemonproc import start_daemon
from tests.faults.helpers import ECHO, assert_no_crash, redis_env, settings, write_flows
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

DEADLINE_S = 2.0


async def test_no_worker_504_at_the_deadline_then_the_job_runs_when_one_starts(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = redis_env(redis_server.url, queue_name)
    flows = write_flows(tmp_path / "flows", [ECHO])
    main_args = [
        "--role",
        "main",
        *settings(flows__paths=flows, server__prediction_timeout_s=DEADLINE_S),
    ]
    with trio.fail_after(60):
        async with (
            start_daemon(main_args, env=env, cwd=str(tmp_path)) as main,
            httpx.AsyncClient(base_url=main.api, timeout=DEADLINE_S + 10) as client,
        ):
            started = time.monotonic()
            late = await client.post("/api/v1/prediction/echo", json={"question": "alone"})
            waited = time.monotonic() - started
            assert late.status_code == 504, late.text
            assert late.headers["content-type"] == "application/json"
            body = late.json()
            job_id = body["jobId"]
            assert job_id in body["message"] and "server.prediction_timeout_s" in body["message"]
            assert late.headers["location"] == f"/api/v1/jobs/{job_id}"

            started = time.monotonic()
            streamed = await client.post(
                "/api/v1/prediction/echo", json={"question": "stream", "streaming": True}
            )
            stream_waited = time.monotonic() - started
            assert streamed.status_code == 200  # the stream had begun: the deadline is an event
            events = parse_flowise_stream(streamed.content)
            assert [name for name, _ in events][-2:] == ["error", "end"], events
            match = re.search(r"job ([0-9a-f]{32}) goes on", events[-2][1])
            assert match, events
            stream_job = match[1]

            for waiting in (job_id, stream_job):
                job = (await client.get(f"/api/v1/jobs/{waiting}")).json()
                assert job["status"] == "waiting" and job["attempts"] == 0, job

            async with start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)) as worker:
                results = []
                for waiting in (job_id, stream_job):
                    # The event stream ends after the terminal event: no polling.
                    replay = await client.get(f"/api/v1/jobs/{waiting}/events")
                    sse, _ = parse_sse(replay.content)
                    assert sse[-1].name == "end", sse
                    job = (await client.get(f"/api/v1/jobs/{waiting}")).json()
                    results.append((job["status"], job["result"], job["attempts"]))
                assert_no_crash(main, worker)
    print(
        f"\nno worker: JSON prediction answered 504 after {waited:.2f}s, streamed prediction "
        f"ended with an error event after {stream_waited:.2f}s (deadline {DEADLINE_S:g}s); "
        f"both jobs ran once a worker started: {results}"
    )
    assert DEADLINE_S <= waited < DEADLINE_S + 1.5
    assert DEADLINE_S <= stream_waited < DEADLINE_S + 1.5
    assert results == [("completed", "alone", 1), ("completed", "stream", 1)]

"""Per-flow rate limits, shared by every main process through the broker."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer

ECHO = {"id": "echo", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}


async def test_rate_limit_is_shared_by_two_main_processes(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    # One request per 10 s after a burst of 3: the test is far quicker than
    # the refill, so the fourth request is refused whichever process takes it.
    limits = ["--set", "limits.flows=echo=6", "--set", "limits.burst=3"]
    with trio.fail_after(60):
        async with (
            start_daemon(["--role", "main", *limits], env=env, cwd=str(tmp_path)) as a,
            start_daemon(["--role", "main", *limits], env=env, cwd=str(tmp_path)) as b,
            httpx.AsyncClient(timeout=10) as client,
        ):
            assert (await client.put(f"{a.api}/api/v1/flows/echo", json=ECHO)).status_code in (
                200,
                201,
            )
            job = {"flow": "echo", "inputs": {"question": "hi"}}
            statuses = [
                (await client.post(f"{base}/api/v1/jobs", json=job)).status_code
                for base in (a.api, b.api, a.api)
            ]
            assert statuses == [202, 202, 202]
            refused = await client.post(f"{b.api}/api/v1/jobs", json=job)
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["Retry-After"]) <= 10
            assert "at most 6 requests a minute" in refused.json()["message"]
            # Predictions count against the same limit.
            predicted = await client.post(
                f"{a.api}/api/v1/prediction/echo", json={"question": "hi"}
            )
            assert predicted.status_code == 429
            assert predicted.json()["statusCode"] == 429
            # Other flows are not limited.
            other = {**ECHO, "id": "other"}
            assert (await client.put(f"{a.api}/api/v1/flows/other", json=other)).status_code in (
                200,
                201,
            )
            for _ in range(5):
                ok = await client.post(
                    f"{b.api}/api/v1/jobs", json={"flow": "other", "inputs": {"question": "x"}}
                )
                assert ok.status_code == 202

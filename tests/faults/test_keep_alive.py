"""A request answered without its body being read (401, 403 before the body
mattered) must not leave the keep-alive connection hanging. Found by the
isolation scenario: bob's refused PUT made his next request on the same
connection wait forever, on about 4 connections in 10 (a main process; the
in-process server does not show it).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from flowqd.auth import hash_key, new_key
from tests.daemonproc import start_daemon
from tests.faults.helpers import redis_env, settings
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

ROUNDS = 30


async def test_refused_requests_with_a_body_leave_the_connection_usable(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    admin, user = new_key(), new_key()
    keys = f"admin:{hash_key(admin)}:admin,user:{hash_key(user)}"
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "main", *settings(auth__keys=keys)],
            env=redis_env(redis_server.url, queue_name),
            cwd=str(tmp_path),
        ) as main:
            for round_ in range(ROUNDS):
                async with httpx.AsyncClient(
                    base_url=main.api, timeout=10, headers={"Authorization": f"Bearer {user}"}
                ) as client:
                    refused = await client.put(
                        "/api/v1/credentials/x", json={"value": f"v{round_}"}
                    )
                    assert refused.status_code == 403
                    with trio.fail_after(3):
                        after = await client.delete("/api/v1/credentials/x")
                    assert after.status_code == 403
                async with httpx.AsyncClient(base_url=main.api, timeout=10) as anonymous:
                    unauthorised = await anonymous.post("/api/v1/jobs", json={"flow": "echo"})
                    assert unauthorised.status_code == 401
                    with trio.fail_after(3):
                        assert (await anonymous.get("/api/v1/ping")).status_code == 200

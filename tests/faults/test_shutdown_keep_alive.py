"""SIGTERM to main is not held up by idle keep-alive connections."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import trio

from tests.daemonproc import start_daemon
from tests.faults.helpers import redis_env, settings
from tests.redisproc import RedisServer


async def test_sigterm_stops_main_promptly_with_an_idle_keep_alive_client(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    """It used to exit only when worker.shutdown_grace_s had passed (10 s here)."""
    env = redis_env(redis_server.url, queue_name)
    with trio.fail_after(30):
        async with (
            start_daemon(
                ["--role", "main", *settings(worker__shutdown_grace_s=10)],
                env=env,
                cwd=str(tmp_path),
            ) as main,
            httpx.AsyncClient(base_url=main.api) as client,
        ):
            assert (await client.get("/api/v1/ping")).status_code == 200
            started = time.monotonic()
            main.signal(signal.SIGTERM)
            code = await main.wait(20)
            assert code == 0 and time.monotonic() - started < 3

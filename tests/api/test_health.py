"""/healthz and /readyz on the main role's port; the log while the main cannot reach Redis."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio

from tests.api.conftest import keyring, open_api
from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer


async def test_health_routes_need_no_key_and_readyz_says_draining() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            live = await api.client.get("/healthz")
            assert (live.status_code, live.json()) == (200, {"status": "ok"})
            ready = await api.client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ready", "reason": "taking requests"}
            assert ready.headers["cache-control"] == "no-store"
            # What SIGTERM sets, seen by the handlers only (the test's server keeps
            # its connections open to answer).
            api.context.shutdown = trio.Event()
            api.context.shutdown.set()
            draining = await api.client.get("/readyz")
            assert draining.status_code == 503
            assert draining.json()["status"] == "not ready"
            assert draining.json()["reason"].startswith("draining: ")
            assert (await api.client.get("/healthz")).status_code == 200


async def _readyz(client: httpx.AsyncClient, base: str) -> httpx.Response:
    return await client.get(f"{base}/readyz")


async def _until_status(client: httpx.AsyncClient, base: str, status: int) -> httpx.Response:
    # Another process's state: nothing to wait on but its answers (the caller's
    # fail_after bounds this).
    while (answer := await _readyz(client, base)).status_code != status:  # noqa: ASYNC110
        await trio.sleep(0.1)
    return answer


async def test_main_readyz_follows_redis_and_the_log_says_when_it_is_lost_and_back(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"REDIS_URL": own_redis_server.url, "QUEUE_NAME": "health-main"}
    args = ["--role", "main", "--set", "redis.connect_timeout_s=0.3"]
    with trio.fail_after(60):
        async with (
            start_daemon(args, env=env, cwd=str(tmp_path)) as daemon,
            httpx.AsyncClient(timeout=5) as client,
        ):
            assert " ready: " in daemon.text()
            answer = await _readyz(client, daemon.api)
            assert answer.status_code == 200, answer.text
            assert (await client.get(f"{daemon.api}/healthz")).json() == {"status": "ok"}

            await trio.to_thread.run_sync(own_redis_server.stop)
            down = await _until_status(client, daemon.api, 503)
            assert down.json()["status"] == "not ready"
            assert down.json()["reason"].startswith("broker unreachable: "), down.json()
            assert down.headers["retry-after"] == "1"
            # Liveness is not readiness: the process still answers.
            assert (await client.get(f"{daemon.api}/healthz")).status_code == 200
            await daemon.wait_for_log("main cannot reach the broker: ")
            # The watch probes once a second: a window of three more failed probes,
            # in which the warning must not come again (nothing to wait on for an
            # absence but time).
            await trio.sleep(3.0)
            warnings = [line for line in daemon.log if "main cannot reach the broker" in line]
            assert len(warnings) == 1, warnings
            assert "reported at most once a minute" in warnings[0]

            await trio.to_thread.run_sync(own_redis_server.start)
            await _until_status(client, daemon.api, 200)
            await daemon.wait_for_log("broker reachable again")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(10) == 0

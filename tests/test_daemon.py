"""The daemon as operators run it: real processes, real signals, real Redis."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio

from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer


async def test_role_all_serves_ping_and_health_then_stops_cleanly(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with start_daemon(["--role", "all"], cwd=str(tmp_path)) as daemon:
            assert "broker=memory" in daemon.text()
            async with httpx.AsyncClient(timeout=5) as client:
                ping = await client.get(f"{daemon.api}/api/v1/ping")
                assert (ping.status_code, ping.text) == (200, "pong")
                live = await client.get(f"{daemon.health}/healthz")
                assert live.status_code == 200
                ready = await client.get(f"{daemon.health}/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json() == {"status": "ready", "reason": "taking jobs"}
                metrics = await client.get(f"{daemon.health}/metrics")
                assert "# TYPE flowqd_worker_jobs_running gauge" in metrics.text
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(5) == 0
            assert "stopped cleanly" in daemon.text()


async def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with start_daemon(["--role", "all"], cwd=str(tmp_path)) as daemon:
            daemon.signal(signal.SIGINT)
            assert await daemon.wait(5) == 0


async def test_worker_readiness_follows_redis(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"REDIS_URL": own_redis_server.url, "QUEUE_NAME": "readiness"}
    with trio.fail_after(60):
        async with start_daemon(["--role", "worker", "--set", "redis.command_timeout_s=0.5",
                                 "--set", "redis.connect_timeout_s=0.5"],
                                env=env, cwd=str(tmp_path)) as daemon:
            async with httpx.AsyncClient(timeout=5) as client:
                ready = await client.get(f"{daemon.health}/readyz")
                assert ready.status_code == 200, ready.text

                await trio.to_thread.run_sync(own_redis_server.stop)
                down = await client.get(f"{daemon.health}/readyz")
                assert down.status_code == 503
                assert down.json()["reason"].startswith("broker unreachable")
                # Liveness is about the process, which is fine.
                assert (await client.get(f"{daemon.health}/healthz")).status_code == 200

                await trio.to_thread.run_sync(own_redis_server.start)
                back = await client.get(f"{daemon.health}/readyz")
                assert back.status_code == 200, back.text
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(10) == 0


async def test_main_and_worker_against_redis_start_and_stop(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": "roles"}
    with trio.fail_after(60):
        async with start_daemon(["--role", "main"], env=env, cwd=str(tmp_path)) as main:
            assert "health" not in main.endpoints  # main has no worker health server
            async with start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)) as worker:
                assert "api" not in worker.endpoints
                async with httpx.AsyncClient(timeout=5) as client:
                    assert (await client.get(f"{main.api}/api/v1/ping")).text == "pong"
                    assert (await client.get(f"{worker.health}/readyz")).status_code == 200
                worker.signal()
                assert await worker.wait(10) == 0
            main.signal()
            assert await main.wait(10) == 0


async def test_worker_started_while_redis_is_down_comes_up_and_waits(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    await trio.to_thread.run_sync(own_redis_server.stop)
    env = {"REDIS_URL": own_redis_server.url, "QUEUE_NAME": "late-redis"}
    with trio.fail_after(60):
        async with start_daemon(["--role", "worker", "--set", "redis.command_timeout_s=0.5",
                                 "--set", "redis.connect_timeout_s=0.5"],
                                env=env, cwd=str(tmp_path)) as daemon:
            async with httpx.AsyncClient(timeout=5) as client:
                down = await client.get(f"{daemon.health}/readyz")
                assert down.status_code == 503
                assert down.json()["reason"].startswith("broker unreachable")
                await trio.to_thread.run_sync(own_redis_server.start)
                up = await client.get(f"{daemon.health}/readyz")
                assert up.status_code == 200, up.text
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(10) == 0

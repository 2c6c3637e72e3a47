"""The daemon as operators run it: real processes, real signals, real Redis."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio

from flowqd.config import RedisConfig
from flowqd.redis import open_redis
from tests.daemonproc import start_daemon
from tests.faults.helpers import poll, status_of
from tests.redisproc import RedisServer


async def _readyz_is(client: httpx.AsyncClient, health: str, status: int) -> bool:
    return await status_of(client, f"{health}/readyz") == status


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
        async with start_daemon(
            [
                "--role",
                "worker",
                "--set",
                "redis.command_timeout_s=0.5",
                "--set",
                "redis.connect_timeout_s=0.5",
            ],
            env=env,
            cwd=str(tmp_path),
        ) as daemon:
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
                # 200 once the worker claims again, which takes a retry, not at once.
                await poll(lambda: _readyz_is(client, daemon.health, 200))
                # Info lines may wait a moment in the log batch (logs.BatchingHandler).
                await daemon.wait_for_log("broker reachable again, taking jobs")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(10) == 0


async def test_worker_readiness_is_whether_it_can_claim_not_whether_redis_answers_ping(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    # CLIENT PAUSE ... WRITE: Redis answers PING and reads, but the claim script
    # (a write) waits: the worker cannot take jobs, and /readyz must say so.
    env = {"REDIS_URL": own_redis_server.url, "QUEUE_NAME": "claims"}
    with trio.fail_after(60):
        async with (
            open_redis(RedisConfig(url=own_redis_server.url)) as redis,
            start_daemon(
                ["--role", "worker", "--set", "redis.command_timeout_s=0.5"],
                env=env,
                cwd=str(tmp_path),
            ) as daemon,
            httpx.AsyncClient(timeout=5) as client,
        ):
            await poll(lambda: _readyz_is(client, daemon.health, 200))
            await redis.execute(b"CLIENT", b"PAUSE", b"60000", b"WRITE")
            await poll(lambda: _readyz_is(client, daemon.health, 503))
            reason = (await client.get(f"{daemon.health}/readyz")).json()["reason"]
            assert reason.startswith(
                "broker unreachable: waiting for the broker, cannot claim jobs: "
            ), reason
            await daemon.wait_for_log("waiting for the broker, cannot claim jobs: ")
            await redis.execute(b"CLIENT", b"UNPAUSE")
            await poll(lambda: _readyz_is(client, daemon.health, 200))
            await daemon.wait_for_log("broker reachable again, taking jobs")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(10) == 0


async def test_main_started_while_redis_is_down_says_so_and_when_it_is_back(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    await trio.to_thread.run_sync(own_redis_server.stop)
    env = {"REDIS_URL": own_redis_server.url, "QUEUE_NAME": "late-redis-main"}
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "main", "--set", "redis.connect_timeout_s=0.5"], env=env, cwd=str(tmp_path)
        ) as daemon:
            text = daemon.text()
            assert (
                f"broker unreachable: Redis at 127.0.0.1:{own_redis_server.port} cannot be "
                "reached" in text
            ), text
            assert " waiting for the broker: role=main broker=redis api=" in text
            assert " ready: " not in text
            await trio.to_thread.run_sync(own_redis_server.start)
            await daemon.wait_for_log(" broker reachable: ready: role=main broker=redis api=")
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
        async with start_daemon(
            [
                "--role",
                "worker",
                "--set",
                "redis.command_timeout_s=0.5",
                "--set",
                "redis.connect_timeout_s=0.5",
            ],
            env=env,
            cwd=str(tmp_path),
        ) as daemon:
            # Up, and saying it cannot work yet instead of "ready".
            assert "waiting for the broker (concurrency" in daemon.text()
            assert " waiting for the broker: role=worker" in daemon.text()
            assert " ready: " not in daemon.text() and "taking jobs" not in daemon.text()
            async with httpx.AsyncClient(timeout=5) as client:
                down = await client.get(f"{daemon.health}/readyz")
                assert down.status_code == 503
                assert down.json()["reason"].startswith("broker unreachable")
                await trio.to_thread.run_sync(own_redis_server.start)
                await poll(lambda: _readyz_is(client, daemon.health, 200))
                # Info lines may wait a moment in the log batch (logs.BatchingHandler).
                await daemon.wait_for_log("broker reachable again, taking jobs")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(10) == 0

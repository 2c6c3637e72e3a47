"""Standard metrics on every /metrics, and one view across ``server.processes``."""

from __future__ import annotations

import os
import re
import resource
import signal
import time
from pathlib import Path

import httpx
import trio

from flowqd.metrics import Counter, Gauge, Histogram, Registry
from tests.api.rawhttp import RawConnection
from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer
from tests.test_api_processes import children


def value(text: str, series: str) -> float | None:
    """The value of ``series`` (name and labels as printed) in a scrape, or None."""
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, flags=re.M)
    return None if match is None else float(match[1])


def _two_processes() -> tuple[Registry, Registry]:
    parent, child = Registry(), Registry()
    for registry in (parent, child):
        registry.add(Counter("requests_total", "r"))
        registry.add(Histogram("latency_seconds", "l"))
        registry.add(Gauge("open_streams", "s"))
        registry.add(Gauge("rss_bytes", "m", across="process"))
        registry.add(Gauge("queue_jobs", "q", across="local"))
    return parent, child


def _metric(registry: Registry, name: str) -> Counter:
    metric = registry.metrics[name]
    assert isinstance(metric, Counter)
    return metric


def test_a_scrape_sums_counters_and_histograms_and_keeps_per_process_gauges_apart() -> None:
    parent, child = _two_processes()
    _metric(parent, "requests_total").inc(3, route="/a")
    _metric(child, "requests_total").inc(4, route="/a")
    _metric(child, "requests_total").inc(1, route="/b")
    for registry, seconds in ((parent, 0.002), (child, 0.2)):
        latency = registry.metrics["latency_seconds"]
        assert isinstance(latency, Histogram)
        latency.observe(seconds, route="/a")
        _metric(registry, "open_streams").set(2)
        _metric(registry, "queue_jobs").set(7, state="waiting")
    _metric(parent, "rss_bytes").set(123456789)
    _metric(child, "rss_bytes").set(2.5)
    text = parent.render([child.snapshot("2")], process="1").decode()
    assert value(text, 'requests_total{route="/a"}') == 7
    assert value(text, 'requests_total{route="/b"}') == 1
    assert value(text, 'latency_seconds_count{route="/a"}') == 2
    assert value(text, 'latency_seconds_bucket{route="/a",le="0.0025"}') == 1
    assert value(text, 'latency_seconds_bucket{route="/a",le="0.25"}') == 2
    assert value(text, "open_streams") == 4
    # Per process, printed in full (not 1.23457e+08).
    assert 'rss_bytes{process="1"} 123456789\n' in text
    assert value(text, 'rss_bytes{process="2"}') == 2.5
    # Read alike by every process at scrape: the answering one's, not a sum.
    assert value(text, 'queue_jobs{state="waiting"}') == 7
    # One process alone: no process label.
    assert "rss_bytes 2.5\n" in child.render().decode()


def test_a_process_shows_the_metrics_only_another_one_has() -> None:
    # --role all with server.processes: the parent runs the worker, its children do not.
    parent, child = _two_processes()
    jobs = parent.add(Counter("worker_jobs_total", "Jobs finished."))
    jobs.inc(5, outcome="completed")
    text = child.render([parent.snapshot("1")], process="2").decode()
    assert "# HELP worker_jobs_total Jobs finished.\n# TYPE worker_jobs_total counter\n" in text
    assert value(text, 'worker_jobs_total{outcome="completed"}') == 5


def test_a_restarted_process_carries_its_predecessors_counters_not_its_gauges() -> None:
    _, before = _two_processes()
    _metric(before, "requests_total").inc(5, route="/a")
    _metric(before, "open_streams").set(9)
    latency = before.metrics["latency_seconds"]
    assert isinstance(latency, Histogram)
    latency.observe(0.1, route="/a")
    _, after = _two_processes()
    after.resume(before.snapshot("2"))
    _metric(after, "requests_total").inc(1, route="/a")
    text = after.render().decode()
    assert value(text, 'requests_total{route="/a"}') == 6
    assert value(text, 'latency_seconds_count{route="/a"}') == 1
    assert value(text, "open_streams") is None


async def test_process_metrics_and_build_info_on_the_api_and_the_health_port(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    with trio.fail_after(30):
        async with (
            start_daemon(["--role", "all"], env=env, cwd=str(tmp_path)) as daemon,
            httpx.AsyncClient(timeout=5) as client,
        ):
            for base in (daemon.api, daemon.health):
                text = (await client.get(f"{base}/metrics")).text
                assert re.search(
                    r'^flowqd_build_info\{python="3\.\d+\.\d+",role="all",version="[^"]+"\} 1$',
                    text,
                    flags=re.M,
                ), text
                started = value(text, "process_start_time_seconds")
                assert started is not None and time.time() - 60 < started <= time.time()
                assert (value(text, "process_resident_memory_bytes") or 0) > 10_000_000
                assert (value(text, "process_virtual_memory_bytes") or 0) > 10_000_000
                assert (value(text, "process_cpu_seconds_total") or 0) > 0
                assert (value(text, "process_open_fds") or 0) >= 3
                soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # inherited
                assert value(text, "process_max_fds") == soft_limit
                # The broker's figures, under the same names on both ports.
                assert (value(text, "flowqd_redis_connections_open") or 0) >= 1
                assert value(text, "flowqd_redis_waiting_tasks") == 0
                assert "flowqd_broker_stat" not in text
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(10) == 0


def _socket_owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server end of the connection from ``client_port``."""
    inode = None
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pids[0]}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                inode = fields[9]
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


async def _scrape(base: str, pids: list[int]) -> tuple[int | None, str]:
    """(the pid that answered, the scrape), on a new connection."""
    connection = RawConnection.for_url(base)
    try:
        status, body = await connection.request("GET", "/metrics")
        assert status == 200
        stream = connection._stream  # still open: the answering process holds its end
        assert stream is not None
        client_port = stream.socket.getsockname()[1]
        return _socket_owner(pids, connection.port, client_port), body.decode()
    finally:
        await connection.aclose()


PINGS = 'flowqd_api_requests_total{method="GET",route="/api/v1/ping",status="200"}'


async def _every_process_shows(base: str, pids: list[int], pings: int) -> list[float]:
    """Scrape until each of ``pids`` has answered with ``pings`` pings; every count seen."""
    seen: list[float] = []
    complete: set[int] = set()
    with trio.move_on_after(15):
        await _scrape_until(base, pids, pings, seen, complete)
    assert complete == set(pids), (
        f"scrapes never showed {pings} pings from every process (the last: {seen[-10:]})"
    )
    return seen


async def _scrape_until(
    base: str, pids: list[int], pings: int, seen: list[float], complete: set[int]
) -> None:
    while complete != set(pids):
        owner, text = await _scrape(base, pids)
        assert owner is not None
        count = value(text, PINGS) or 0
        seen.append(count)
        for number in (1, 2):  # each process's own series
            assert f'process_start_time_seconds{{process="{number}"}}' in text, text
        if count == pings:
            complete.add(owner)
        # A sibling's figures show within a second (the caller's deadline bounds this).
        await trio.sleep(0.05)


async def test_one_scrape_counts_the_requests_of_every_api_process_even_after_a_restart(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    args = ["--role", "main", "--set", "server.processes=2"]
    with trio.fail_after(90):
        async with start_daemon(args, env=env, cwd=str(tmp_path)) as main:
            [child] = children(main.process.pid)
            pids = [main.process.pid, child]
            served: set[int] = set()
            for _ in range(40):  # a new connection each: the kernel spreads them
                connection = RawConnection.for_url(main.api)
                status, _ = await connection.request("GET", "/api/v1/ping")
                assert status == 200
                assert connection._stream is not None
                port = connection._stream.socket.getsockname()[1]
                owner = _socket_owner(pids, connection.port, port)
                assert owner is not None
                served.add(owner)
                await connection.aclose()
            assert served == set(pids), "the pings all went to one process: run it again"
            seen = await _every_process_shows(main.api, pids, 40)
            assert seen == sorted(seen), f"a counter went backwards: {seen}"

            # kill -9: no last words; its restarted successor carries its counts on.
            os.kill(child, signal.SIGKILL)
            await main.wait_for_log("API process 2 exited with code -9; restarting it")
            while children(main.process.pid) in ([], [child]):  # noqa: ASYNC110
                await trio.sleep(0.05)  # reaped and respawned: bounded by fail_after
            [second] = children(main.process.pid)
            await main.wait_for_log(f"API process 2 (pid {second}) is serving", seconds=30)
            after = await _every_process_shows(main.api, [main.process.pid, second], 40)
            assert min(after) == 40, f"the restart lost counts: {after}"
            main.signal(signal.SIGTERM)
            assert await main.wait(10) == 0

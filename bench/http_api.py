"""Predictions through HTTP: one ``--role main`` and one ``--role worker`` process on Redis.

    .venv/bin/python bench/http_api.py [--clients 20,100] [--seconds 10] [--waiting 2000]
                                       [--processes 1] [--py-spy FILE]

Starts its own redis-server (tests/redisproc.py) and the two flowqd processes,
registers an echo flow, then for each client count runs that many concurrent
clients (one kept-alive connection each) posting predictions for a fixed
time. Prints predictions/s, latency p50/p99, CPU and RSS of each process and
the Redis connections each holds (a table, then one JSON line per figure);
then holds ``--waiting`` predictions waiting at once (queue paused) and
counts the main process's Redis connections before letting them finish.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and this file
# (http.py) would shadow the standard library's http package that httpx needs.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402
import orjson  # noqa: E402
import trio  # noqa: E402

from bench.drain import emit  # noqa: E402
from flowqd.config import RedisConfig  # noqa: E402
from flowqd.redis import open_redis  # noqa: E402
from tests.api.rawhttp import RawConnection  # noqa: E402
from tests.daemonproc import Daemon, start_daemon  # noqa: E402
from tests.redisproc import RedisServer  # noqa: E402

ECHO = {"id": "echo", "nodes": [{"id": "e", "type": "echo", "label": "Echo"}], "output": "e"}


def _pid_figures(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M)[1])  # type: ignore[index]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return rss_kb / 1024, ticks / os.sysconf("SC_CLK_TCK")


def process_figures(daemon: Daemon) -> tuple[float, float]:
    """(largest RSS in MB, CPU seconds so far) of a daemon and its API processes, from /proc.

    With server.processes > 1 the extra API processes are the daemon's
    children: CPU is their sum, RSS the largest one (each must stay under
    the target on its own).
    """
    pid = daemon.process.pid
    # Per thread: trio spawns processes from a worker thread.
    children = [
        child
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    figures = [_pid_figures(p) for p in (pid, *map(int, children))]
    return max(rss for rss, _ in figures), sum(cpu for _, cpu in figures)


async def redis_clients(url: str) -> dict[str, int]:
    async with open_redis(RedisConfig(url=url), name="flowqd-bench") as redis:
        listing = (await redis.execute(b"CLIENT", b"LIST")).decode()
    counts: dict[str, int] = {}
    for name in re.findall(r" name=(\S*) ", listing):
        # By role: flowqd-main-HOST-PID and its -claim connections count as flowqd-main.
        name = re.sub(r"^(flowqd-(?:main|worker|all))-.*", r"\1", name)
        if name != "flowqd-bench":
            counts[name] = counts.get(name, 0) + 1
    return counts


async def load(api: str, clients: int, seconds: float) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = trio.current_time() + seconds

    async def client(n: int) -> None:
        nonlocal errors
        connection = RawConnection.for_url(api)
        i = 0
        try:
            while trio.current_time() < deadline:
                started = time.perf_counter()
                status, body = await connection.request(
                    "POST", "/api/v1/prediction/echo", {"question": f"c{n}-{i}"}
                )
                latencies.append(time.perf_counter() - started)
                if status != 200 or orjson.loads(body)["text"] != f"c{n}-{i}":
                    errors += 1
                i += 1
        finally:
            await connection.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(clients):
            nursery.start_soon(client, n)
    return len(latencies), latencies, errors


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def waiting_metric(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    match = re.search(r"^flowqd_api_predictions_waiting (\S+)$", text, flags=re.M)
    return float(match[1]) if match else 0.0


async def waiting_at_least(client: httpx.AsyncClient, n: int) -> None:
    while True:
        if await waiting_metric(client) >= n:
            return
        await trio.sleep(0.05)


async def hold_waiting(api: str, url: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=120) as control:
        await control.post("/api/v1/queue/pause")
        statuses: list[int] = []

        async def predict(i: int) -> None:
            connection = RawConnection.for_url(api)
            try:
                status, _ = await connection.request(
                    "POST", "/api/v1/prediction/echo", {"question": f"w{i}"}
                )
                statuses.append(status)
            finally:
                await connection.aclose()

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for step in range(0, count, 200):
                for i in range(step, min(count, step + 200)):
                    nursery.start_soon(predict, i)
                await waiting_at_least(control, min(count, step + 200))
            opened = time.perf_counter() - started
            clients = await redis_clients(url)
            print(
                f"{count} waiting predictions (opened in {opened:.1f}s): Redis connections "
                f"held: main {clients.get('flowqd-main', 0)}, all {clients}"
            )
            resumed = time.perf_counter()
            await control.post("/api/v1/queue/resume")
        ok = sum(1 for s in statuses if s == 200)
        print(
            f"  all {count} answered {time.perf_counter() - resumed:.1f}s after resume; "
            f"{ok} with 200"
        )


async def main(args: argparse.Namespace) -> None:
    redis = RedisServer()
    redis.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            flows = Path(tmp) / "flows"
            flows.mkdir()
            (flows / "echo.json").write_bytes(orjson.dumps(ECHO))
            env = {"REDIS_URL": redis.url, "QUEUE_NAME": "bench-http"}
            main_args = [
                "--role",
                "main",
                "--set",
                f"flows.paths={flows}",
                "--set",
                "server.prediction_timeout_s=120",
                "--set",
                f"server.processes={args.processes}",
            ]
            async with (
                start_daemon(main_args, env=env, cwd=tmp) as main_role,
                start_daemon(["--role", "worker"], env=env, cwd=tmp) as worker,
            ):
                await load(main_role.api, 10, 1.0)  # warm-up
                spy = None
                if args.py_spy:
                    # The main process during the runs only (--format raw: collapsed stacks).
                    spy = await trio.lowlevel.open_process(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "--pid",
                            str(main_role.process.pid),
                            "--rate",
                            "500",
                            "--format",
                            "raw",
                            "--output",
                            args.py_spy,
                        ]
                    )
                for clients in args.clients:
                    main_cpu0, worker_cpu0 = (
                        process_figures(main_role)[1],
                        process_figures(worker)[1],
                    )
                    wall = time.perf_counter()
                    done, latencies, errors = await load(main_role.api, clients, args.seconds)
                    wall = time.perf_counter() - wall
                    main_rss, main_cpu = process_figures(main_role)
                    worker_rss, worker_cpu = process_figures(worker)
                    held = await redis_clients(redis.url)
                    print(
                        f"{clients:4d} clients: {done / wall:7.0f} predictions/s  "
                        f"p50 {percentile(latencies, 0.5) * 1e3:6.1f} ms  "
                        f"p99 {percentile(latencies, 0.99) * 1e3:6.1f} ms  errors {errors}"
                    )
                    print(
                        f"      CPU per prediction: main "
                        f"{(main_cpu - main_cpu0) / done * 1e3:.2f} ms, worker "
                        f"{(worker_cpu - worker_cpu0) / done * 1e3:.2f} ms;  RSS main "
                        f"{main_rss:.0f} MB, worker {worker_rss:.0f} MB;  Redis connections "
                        f"{held}"
                    )
                    # With extra API processes the figures say so (http_p2_20_...).
                    processes = f"p{args.processes}_" if args.processes > 1 else ""
                    prefix = f"http_{processes}{clients}_"
                    for name, value, unit in [
                        ("predictions_s", done / wall, "req/s"),
                        ("p50_ms", percentile(latencies, 0.5) * 1e3, "ms"),
                        ("p99_ms", percentile(latencies, 0.99) * 1e3, "ms"),
                        ("errors", errors, "requests"),
                        ("main_cpu_ms_per_req", (main_cpu - main_cpu0) / done * 1e3, "ms/req"),
                        (
                            "worker_cpu_ms_per_req",
                            (worker_cpu - worker_cpu0) / done * 1e3,
                            "ms/req",
                        ),
                        ("main_rss_mb", main_rss, "MB"),
                        ("worker_rss_mb", worker_rss, "MB"),
                        ("main_redis_connections", held.get("flowqd-main", 0), "connections"),
                    ]:
                        emit(prefix + name, value, unit)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    await spy.wait()
                if args.waiting:
                    await hold_waiting(main_role.api, redis.url, args.waiting)
                    main_rss, _ = process_figures(main_role)
                    print(f"  RSS main after: {main_rss:.0f} MB")
    finally:
        redis.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients", default="20,100", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--waiting", type=int, default=2000)
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server.processes of the main role (API processes on the port)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        help="sample the main process with py-spy during the runs (collapsed stacks)",
    )
    trio.run(main, parser.parse_args())

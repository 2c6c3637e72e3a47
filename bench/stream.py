"""Streaming: concurrent SSE clients each receiving N `token` events from an executor.

    .venv/bin/python bench/stream.py [--clients 100] [--tokens 1000] [--quick]

Starts its own redis-server, one ``--role main`` and one ``--role worker``
process. Both load a plugin written at run time into a temp folder: node type
``tokens`` (params ``count``) emits ``count`` token events. A flow of one
``tokens`` node is registered with PUT /api/v1/flows/{id}, then ``--clients``
streaming predictions are opened at once and each client counts the `token`
events it receives. Reports token events/s delivered across all clients
(from the first request to the last stream's end), per-client completion
time p50/max, CPU seconds used by main, worker and the clients (this
process) during the run, and the RSS of both processes (now and peak). ``--quick`` runs
20 clients x 200 tokens. Prints a table and one JSON line per figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio

# The repository root instead of bench/ (whose modules, http.py say, would shadow stdlib ones).
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from bench.drain import cpu_seconds, emit, rss_mb
from tests.daemonproc import start_daemon
from tests.redisproc import RedisServer

# Named so it cannot shadow a stdlib or installed module when the plugin folder is imported.
PLUGIN = '''\
"""bench_tokens: node type `tokens` emitting `count` token events."""

from __future__ import annotations

import attrs

from flowqd import Executor, NodeContext, hookimpl


@attrs.frozen
class TokensParams:
    count: int = attrs.field(default=1000, validator=attrs.validators.ge(0))


async def tokens(ctx: NodeContext) -> str:
    for i in range(ctx.params.count):
        ctx.emit("token", f"t{i} ")
    return f"{ctx.params.count} tokens"


@hookimpl
def flowqd_executors() -> list[Executor]:
    return [Executor(type="tokens", params=TokensParams, run=tokens,
                     description="Emit `count` token events.")]
'''

FLOW_ID = "stream"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def stream_one(client: httpx.AsyncClient, question: str) -> tuple[int, bool]:
    """(token events received, whether the stream ended with `end` and no `error`)."""
    tokens = 0
    ended = failed = False
    buffer = b""
    async with client.stream(
        "POST", f"/api/v1/prediction/{FLOW_ID}", json={"question": question, "streaming": True}
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return 0, False
        async for chunk in response.aiter_raw():
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                _, sep, data = frame.partition(b"data:")
                if not sep:
                    continue  # a heartbeat comment
                event = orjson.loads(data)["event"]
                if event == "token":
                    tokens += 1
                elif event == "end":
                    ended = True
                elif event == "error":
                    failed = True
    return tokens, ended and not failed


async def load(api: str, clients: int) -> tuple[float, list[float], list[int], int]:
    """(wall seconds, per-client completion seconds, tokens per client, failed streams)."""
    durations: list[float] = []
    counts: list[int] = []
    failures = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=api, timeout=180, limits=limits) as client:
        started = time.perf_counter()

        async def one(n: int) -> None:
            nonlocal failures
            tokens, ok = await stream_one(client, f"c{n}")
            durations.append(time.perf_counter() - started)
            counts.append(tokens)
            failures += not ok

        async with trio.open_nursery() as nursery:
            for n in range(clients):
                nursery.start_soon(one, n)
        wall = time.perf_counter() - started
    return wall, durations, counts, failures


async def bench(url: str, clients: int, tokens: int) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plugins = Path(tmp) / "plugins"
        plugins.mkdir()
        (plugins / "bench_tokens.py").write_text(PLUGIN)
        env = {"REDIS_URL": url, "QUEUE_NAME": "bench-stream"}
        common = ["--set", f'plugins.paths=["{plugins}"]']
        async with (
            start_daemon(
                ["--role", "main", *common, "--set", "server.prediction_timeout_s=180"],
                env=env,
                cwd=tmp,
            ) as main_role,
            start_daemon(["--role", "worker", *common], env=env, cwd=tmp) as worker,
        ):
            flow = {
                "id": FLOW_ID,
                "output": "t",
                "nodes": [{"id": "t", "type": "tokens", "params": {"count": tokens}}],
            }
            async with httpx.AsyncClient(base_url=main_role.api, timeout=30) as control:
                response = await control.put(f"/api/v1/flows/{FLOW_ID}", json=flow)
                if response.status_code >= 300:
                    raise RuntimeError(f"PUT flow: {response.status_code} {response.text}")
            await load(main_role.api, min(clients, 5))  # warm-up
            pids = main_role.process.pid, worker.process.pid
            cpu0 = [cpu_seconds(pid) for pid in pids], time.process_time()
            wall, durations, counts, failures = await load(main_role.api, clients)
            # Whose CPU bounds the rate: the clients (this process) share the machine.
            main_cpu, worker_cpu = (
                cpu_seconds(pid) - c for pid, c in zip(pids, cpu0[0], strict=True)
            )
            client_cpu = time.process_time() - cpu0[1]
            delivered = sum(counts)
            results["stream_events_s"] = delivered / wall
            results["stream_wall_s"] = wall
            results["stream_client_p50_s"] = percentile(durations, 0.5)
            results["stream_client_max_s"] = max(durations)
            results["stream_missing_events"] = clients * tokens - delivered
            results["stream_failed_streams"] = failures
            results["stream_main_cpu_s"] = main_cpu
            results["stream_worker_cpu_s"] = worker_cpu
            results["stream_client_cpu_s"] = client_cpu
            results["stream_main_rss_mb"] = rss_mb(main_role.process.pid)
            results["stream_worker_rss_mb"] = rss_mb(worker.process.pid)
            results["stream_main_peak_rss_mb"] = peak_rss_mb(main_role.process.pid)
            results["stream_worker_peak_rss_mb"] = peak_rss_mb(worker.process.pid)
    return results


UNITS = {
    "_events_s": "events/s",
    "_s": "s",
    "_events": "events",
    "_streams": "streams",
    "_mb": "MB",
}


def unit_of(name: str) -> str:
    return next(u for suffix, u in UNITS.items() if name.endswith(suffix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=1000, help="token events per client")
    parser.add_argument("--quick", action="store_true", help="20 clients x 200 tokens")
    args = parser.parse_args()
    clients, tokens = (20, 200) if args.quick else (args.clients, args.tokens)
    server = RedisServer()
    server.start()
    try:
        results = trio.run(bench, server.url, clients, tokens)
    finally:
        server.close()
    print(f"{clients} clients x {tokens} token events")
    print(f"{'figure':28} {'value':>12}")
    for name, value in results.items():
        print(f"{name:28} {value:12,.2f} {unit_of(name)}")
    for name, value in results.items():
        emit(name, value, unit_of(name))


if __name__ == "__main__":
    main()

"""flowqd roles as real subprocesses, for tests and benchmarks.

Start-up ends with the daemon's own ``ready:`` log line, or ``waiting for the
broker:`` when Redis did not answer (both carry the bound addresses, so every
test can ask for port 0); nothing here sleeps to wait.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import attrs
import orjson
import trio

# The lines that end start-up, each followed by the bound addresses.
STARTED = (" ready: ", " waiting for the broker: ")


@attrs.define(eq=False)
class Daemon:
    process: trio.Process
    endpoints: dict[str, str]
    log: list[str]
    waiters: list[tuple[str, trio.Event]]

    @property
    def api(self) -> str:
        return self.endpoints["api"]

    @property
    def health(self) -> str:
        return self.endpoints["health"]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def wait(self, seconds: float) -> int:
        with trio.fail_after(seconds):
            return await self.process.wait()

    def text(self) -> str:
        return "\n".join(self.log)

    async def wait_for_log(self, text: str, seconds: float = 10.0) -> None:
        """Return once a log line containing ``text`` has been written."""
        if text in self.text():
            return
        arrived = trio.Event()
        self.waiters.append((text, arrived))
        with trio.fail_after(seconds):
            await arrived.wait()


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment minus anything that would configure flowqd by accident."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLOWQD_", "REDIS_"))
        and k not in ("MODE", "PORT", "WORKER_PORT", "QUEUE_NAME", "WORKER_CONCURRENCY")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@asynccontextmanager
async def start_daemon(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    ready_timeout: float = 20.0,
    command: Sequence[str] | None = None,
) -> AsyncIterator[Daemon]:
    """Start ``flowqd ARGS`` on free ports and yield it once it logged ``ready:``
    (or ``waiting for the broker:``).

    On exit the process is killed if it is still running.
    """
    argv = [*(command or [sys.executable, "-m", "flowqd"]), *args]
    if "--set" not in " ".join(args) or "server.port" not in " ".join(args):
        argv += ["--set", "server.port=0"]
    if "worker.health_port" not in " ".join(args):
        argv += ["--set", "worker.health_port=0"]
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=base_env(env),
        cwd=cwd,
    )
    log: list[str] = []
    waiters: list[tuple[str, trio.Event]] = []
    ready = trio.Event()
    endpoints: dict[str, str] = {}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_log, process, log, ready, endpoints, waiters)
            with trio.move_on_after(ready_timeout):
                await ready.wait()
            if not endpoints:
                raise RuntimeError("flowqd did not become ready:\n" + "\n".join(log[-40:]))
            try:
                yield Daemon(process, endpoints, log, waiters)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


async def _read_log(
    process: trio.Process,
    log: list[str],
    ready: trio.Event,
    endpoints: dict[str, str],
    waiters: list[tuple[str, trio.Event]],
) -> None:
    assert process.stderr is not None
    buffer = b""
    async for chunk in process.stderr:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            log.append(line)
            for text, arrived in waiters:
                if text in line:
                    arrived.set()
            text = _message(line)
            marker = next((m for m in STARTED if m in text), None)
            if not ready.is_set() and marker is not None:
                for part in text.split(marker, 1)[1].split():
                    key, _, value = part.partition("=")
                    endpoints[key] = value
                ready.set()
    if not ready.is_set():
        ready.set()  # exited before ready; start_daemon reports the log


def _message(line: str) -> str:
    """A text line as it is; a JSON line (log.format = "json") as " " + its msg."""
    if line.startswith("{"):
        try:
            return " " + str(orjson.loads(line).get("msg", ""))
        except orjson.JSONDecodeError:
            pass
    return line

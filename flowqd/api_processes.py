"""Extra API processes sharing the main process's port (``server.processes``).

One process answers HTTP on one core; hypercorn and Quart cost most of a
prediction's CPU in ``main``. With ``server.processes = N`` the main process
starts N - 1 copies of itself as ``--role main`` on the same port
(SO_REUSEPORT: the kernel spreads new connections among them). They share
everything else through Redis.

The parent supervises them: each child reports readiness with ``READY=1`` on
a notification socket of the parent's (the sd_notify protocol, so the child
runs the same code as under systemd), a child that dies is restarted, and on
shutdown each gets SIGTERM and drains like any main process. A child watches
its parent through a pidfd and drains when the parent is gone, even after a
``kill -9``, so no orphan keeps serving the port.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence

import trio

from flowqd.backoff import Backoff
from flowqd.errors import ProcessError

log = logging.getLogger("flowqd")

# Set in a child's environment to the parent's pid.
PARENT_ENV = "_FLOWQD_PARENT_PID"  # not FLOWQD_*: those are settings
START_TIMEOUT_S = 60.0
# How long a child that does not exit after SIGTERM is waited for once the
# parent's own deadline has passed, before SIGKILL.
KILL_AFTER_S = 5.0


def child_command(argv: Sequence[str], port: int) -> list[str]:
    """The command line of an extra API process: this daemon's, as ``--role main`` on ``port``."""
    launcher = (
        [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "flowqd"]
    )
    # Later flags win: the child serves the API only, on the port the parent
    # bound, and leaves loading flow files to the parent.
    return [
        *launcher,
        *argv,
        "--role",
        "main",
        "--set",
        f"server.port={port}",
        "--set",
        "server.processes=1",
        "--set",
        "flows.paths=[]",
    ]


ExtraEnv = Callable[[int], Mapping[str, str]]


def _no_extra_env(number: int) -> Mapping[str, str]:
    return {}


async def run_api_processes(
    command: Sequence[str],
    count: int,
    shutdown: trio.Event,
    extra_env: ExtraEnv = _no_extra_env,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``count`` copies of ``command``; ``started()`` once each said it is ready.

    ``extra_env(number)`` is added to process ``number``'s environment (the
    shared metrics' directory and slot). Raises ProcessError when one exits
    or stays silent before its first readiness. Returns once ``shutdown`` is
    set and every child has exited.
    """
    async with trio.open_nursery() as nursery:
        for number in range(2, count + 2):  # the parent is process 1
            env = extra_env(number)
            await nursery.start(_supervise, list(command), number, shutdown, env)
        task_status.started()


async def _supervise(
    command: list[str],
    number: int,
    shutdown: trio.Event,
    extra_env: Mapping[str, str],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    backoff = Backoff(initial=0.5, maximum=10.0)
    first = True
    while not shutdown.is_set():
        status = task_status if first else None
        code = await _run_once(command, number, shutdown, extra_env, status)
        first = False
        if shutdown.is_set():
            return
        log.error("API process %d exited with code %s; restarting it", number, code)
        await backoff.wait()


async def _run_once(
    command: list[str],
    number: int,
    shutdown: trio.Event,
    extra_env: Mapping[str, str],
    task_status: trio.TaskStatus[None] | None,
) -> int:
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        name = f"flowqd-{os.getpid()}-{number}-{secrets.token_hex(4)}"
        await notify.bind("\0" + name)
        # Its own session: a signal to our process group (Ctrl-C, `timeout`)
        # reaches the child once, from us, not twice (a second one forces it).
        process = await trio.lowlevel.open_process(
            command, env={**_child_env(os.environ, name), **extra_env}, start_new_session=True
        )
        try:
            if not await _wait_ready(notify, process):
                message = (
                    f"API process {number} (server.processes) exited with code "
                    f"{process.returncode} before it was ready; its log lines above "
                    "say why"
                )
                if task_status is not None:
                    raise ProcessError(message)
                log.error("%s", message)
                return await process.wait()
            log.info("API process %d (pid %d) is serving", number, process.pid)
            if task_status is not None:
                task_status.started()
            async with trio.open_nursery() as nursery:

                async def stop_on_shutdown() -> None:
                    await shutdown.wait()
                    process.send_signal(signal.SIGTERM)

                nursery.start_soon(stop_on_shutdown)
                code = await process.wait()
                nursery.cancel_scope.cancel()
            return code
        finally:
            if process.returncode is None:
                # Cancelled (our deadline passed, or a second signal): the
                # child had its SIGTERM or gets it now, then a last chance.
                with trio.CancelScope(shield=True):
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(KILL_AFTER_S):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()


async def _wait_ready(notify: trio.socket.SocketType, process: trio.Process) -> bool:
    """True once the child sends ``READY=1``; False if it exits first."""
    ready = False
    async with trio.open_nursery() as nursery:

        async def exited() -> None:
            await process.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(exited)
        with trio.fail_after(START_TIMEOUT_S):
            while not ready:
                message = await notify.recv(4096)
                ready = b"READY=1" in message.split(b"\n")
        nursery.cancel_scope.cancel()
    return ready


def _child_env(environ: Mapping[str, str], notify_name: str) -> dict[str, str]:
    env = dict(environ)
    # The child notifies us, not systemd; the watchdog is ours to keep.
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(key, None)
    env["NOTIFY_SOCKET"] = "@" + notify_name
    env[PARENT_ENV] = str(os.getpid())
    return env


def parent_of_this_process(environ: Mapping[str, str] | None = None) -> int | None:
    """The pid of the main process this one serves for, or None if it is not a child."""
    value = (os.environ if environ is None else environ).get(PARENT_ENV)
    return int(value) if value else None


async def watch_parent(
    pid: int,
    on_gone: Callable[[], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_gone`` when process ``pid`` exits (at once if it already has)."""
    try:
        fd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = None
    task_status.started()
    if fd is not None:
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
    log.warning("the main process (pid %d) is gone: draining", pid)
    on_gone()

"""``server.processes``: extra API processes on the main process's port, as real processes."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
import trio

from flowqd.api_processes import run_api_processes
from flowqd.errors import ProcessError
from tests.daemonproc import Daemon, start_daemon
from tests.redisproc import RedisServer


def children(pid: int) -> list[int]:
    # Per thread: trio spawns processes from a worker thread.
    return sorted(
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    )


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` holds a listening socket on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


async def wait_gone(pid: int) -> None:
    # No event says another process's child has exited; the caller's
    # fail_after bounds the poll.
    while alive(pid):  # noqa: ASYNC110
        await trio.sleep(0.05)


async def ping(daemon: Daemon, times: int = 10) -> None:
    for _ in range(times):  # new connections: the kernel spreads them over the processes
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(f"{daemon.api}/api/v1/ping")
            assert (answer.status_code, answer.text) == (200, "pong")


@pytest.fixture
def env(redis_server: RedisServer, queue_name: str) -> dict[str, str]:
    return {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}


async def test_extra_processes_share_the_port_and_stop_with_the_main_one(
    env: dict[str, str], tmp_path: Path
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "echo.json").write_text(
        '{"id": "echo", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}'
    )
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "all", "--set", "server.processes=3", "--set", f"flows.paths={flows}"],
            env=env,
            cwd=str(tmp_path),
        ) as main:
            assert main.endpoints["api_processes"] == "3"
            port = int(main.api.rsplit(":", 1)[1])
            extra = children(main.process.pid)
            assert len(extra) == 2
            for pid in (main.process.pid, *extra):
                assert port in listening_ports(pid)
            # Whichever process takes the connection, the prediction runs on
            # the worker in the main process and its answer comes back.
            for n in range(12):
                async with httpx.AsyncClient(timeout=10) as client:
                    answer = await client.post(
                        f"{main.api}/api/v1/prediction/echo", json={"question": f"q{n}"}
                    )
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["text"] == f"q{n}"
            main.signal(signal.SIGTERM)
            assert await main.wait(10) == 0
            for pid in extra:
                await wait_gone(pid)
            # Each drained once: the parent's SIGTERM was their only signal.
            assert main.text().count("SIGTERM: draining") == 3
            assert "stopped at once" not in main.text()


async def test_a_dead_extra_process_is_restarted(env: dict[str, str], tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "main", "--set", "server.processes=2"], env=env, cwd=str(tmp_path)
        ) as main:
            [first] = children(main.process.pid)
            os.kill(first, signal.SIGKILL)
            await main.wait_for_log("API process 2 exited with code -9; restarting it")
            while children(main.process.pid) in ([], [first]):  # noqa: ASYNC110
                await trio.sleep(0.05)  # reaped and respawned: bounded by fail_after
            [second] = children(main.process.pid)
            await main.wait_for_log(f"API process 2 (pid {second}) is serving", seconds=30)
            assert int(main.api.rsplit(":", 1)[1]) in listening_ports(second)
            await ping(main)
            main.signal(signal.SIGTERM)
            assert await main.wait(10) == 0


async def test_extra_processes_drain_and_exit_when_the_main_one_is_killed(
    env: dict[str, str], tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "main", "--set", "server.processes=3"], env=env, cwd=str(tmp_path)
        ) as main:
            extra = children(main.process.pid)
            main.signal(signal.SIGKILL)
            await main.wait(10)
            for pid in extra:
                await wait_gone(pid)
            assert main.text().count(f"the main process (pid {main.process.pid}) is gone") == 2


async def test_a_child_that_exits_before_ready_fails_the_start() -> None:
    command = [sys.executable, "-c", "import sys; print('bad port', file=sys.stderr); sys.exit(3)"]
    errors: list[str] = []
    with trio.fail_after(30):
        try:
            await run_api_processes(command, 1, trio.Event())
        except* ProcessError as group:
            errors = [str(exc) for exc in group.exceptions]
    assert errors == [
        "API process 2 (server.processes) exited with code 3 before it was "
        "ready; its log lines above say why"
    ]


# A stand-in child: says READY=1 the way flowqd's notifier does, then waits
# for SIGTERM (and says it got it on stdout).
READY_CHILD = r"""
import os, signal, socket, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.sendto(b"STATUS=x\nREADY=1", "\0" + os.environ["NOTIFY_SOCKET"][1:])
assert os.environ["_FLOWQD_PARENT_PID"] == str(os.getppid())
while not got:
    time.sleep(0.01)
sys.exit(0)
"""


async def test_supervisor_waits_for_ready_and_stops_children_on_shutdown() -> None:
    shutdown = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_api_processes, [sys.executable, "-c", READY_CHILD], 2, shutdown)
            # started() came after both READY=1: each child is running now.
            shutdown.set()
        # Returned: both children took the SIGTERM and exited 0 (else this
        # would hang until fail_after, or log a restart).


async def test_processes_need_redis(tmp_path: Path) -> None:
    with trio.fail_after(30):
        process = await trio.run_process(
            [sys.executable, "-m", "flowqd", "--role", "all", "--set", "server.processes=2"],
            capture_stderr=True,
            check=False,
            cwd=str(tmp_path),
            env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        )
    assert process.returncode == 2
    assert b"server.processes = 2 needs Redis" in process.stderr

"""systemd notifications (flowqd.notify) against a real unix datagram socket.

The daemon tests run ``python -m flowqd`` as systemd would: ``NOTIFY_SOCKET``
names a socket this test reads; the order of messages is the contract.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import pytest
import trio

from flowqd.notify import Notifier
from tests.daemonproc import start_daemon
from tests.packaging.notifysock import listen


def blocking_listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


# -- the protocol, in process ------------------------------------------------


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert notifier.ready("x") is False


def test_message_is_one_datagram_of_lines(socket_path: str) -> None:
    with blocking_listener(socket_path) as sock:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": socket_path})
        try:
            assert notifier.ready("serving: api=http://x")
            assert notifier.stopping("draining")
        finally:
            notifier.close()
        assert drain(sock) == [
            b"READY=1\nSTATUS=serving: api=http://x",
            b"STOPPING=1\nSTATUS=draining",
        ]


def test_status_stays_on_one_line(socket_path: str) -> None:
    with blocking_listener(socket_path) as sock:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": socket_path})
        try:
            assert notifier.status("waiting for the broker: refused\nREADY=1")
        finally:
            notifier.close()
        assert drain(sock) == [b"STATUS=waiting for the broker: refused READY=1"]


def test_abstract_socket_name() -> None:
    name = f"flowqd-test-{os.getpid()}"
    with blocking_listener("\0" + name) as sock:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.status("hello")
        finally:
            notifier.close()
        assert drain(sock) == [b"STATUS=hello"]


def test_unreachable_socket_is_logged_not_raised(socket_path: str) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": socket_path})  # nobody listens
    try:
        assert notifier.ready("x") is False
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        # Meant for another process (our parent did not unset it): not ours to ping.
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getppid())}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid(
    env: dict[str, str], interval: float | None
) -> None:
    assert Notifier.from_environ(env).watchdog_interval_s == interval


def test_vsock_address_is_not_used() -> None:
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


async def test_watchdog_task_pings_every_interval(
    socket_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    with blocking_listener(socket_path) as sock:
        env = {"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "10000000"}
        notifier = Notifier.from_environ(env)
        assert notifier.watchdog_interval_s == 5.0
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(notifier.run_watchdog)
                await trio.sleep(12)  # pings at 0, 5 and 10
                nursery.cancel_scope.cancel()
        finally:
            notifier.close()
        assert drain(sock) == [b"WATCHDOG=1"] * 3


# -- the daemon, as systemd runs it ------------------------------------------


async def test_daemon_ready_after_serving_then_stopping_on_sigterm(
    socket_path: str, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        async with listen(socket_path) as listener:
            env = {"NOTIFY_SOCKET": socket_path}
            async with start_daemon(["--role", "all"], env=env, cwd=str(tmp_path)) as daemon:
                ready = await listener.until("READY")
                assert ready["READY"] == "1"
                assert ready["STATUS"].startswith("serving: role=all")
                assert daemon.api in ready["STATUS"]
                async with httpx.AsyncClient(timeout=5) as client:
                    # READY is sent only once the API answers.
                    assert (await client.get(f"{daemon.api}/api/v1/ping")).text == "pong"
                assert not any("STOPPING" in m for m in listener.messages)
                daemon.signal(signal.SIGTERM)
                stopping = await listener.until("STOPPING")
                assert stopping["STATUS"].startswith("draining")
                assert await daemon.wait(10) == 0
            assert listener.keys("READY", "STOPPING") == ["READY", "STOPPING"]


async def test_daemon_pings_watchdog_until_it_stops(socket_path: str, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with listen(socket_path) as listener:
            # 0.2 s: a ping every 0.1 s; the fail_after above bounds the wait.
            env = {"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "200000"}
            async with start_daemon(["--role", "all"], env=env, cwd=str(tmp_path)) as daemon:
                await listener.until("READY")
                for _ in range(3):
                    await listener.until("WATCHDOG")
                daemon.signal(signal.SIGTERM)
                await listener.until("STOPPING")
                assert await daemon.wait(10) == 0
            assert listener.messages[0] == {"WATCHDOG": "1"}, "pings start before READY"

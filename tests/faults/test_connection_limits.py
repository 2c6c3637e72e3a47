"""Clients that hold connections open cannot exhaust a main process.

Found by attacking a main: 3,000 half-sent requests stayed open 32 s, 21,000
idle connections hit the file limit and the log filled with tracebacks. A
request head now has server.header_timeout_s to arrive, connections past
server.max_connections get a 503 and are closed, and a flood logs one line.
Real main processes, raw sockets (a slow or silent client is what is tested).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import orjson
import pytest
import trio

from tests.api.rawhttp import RawConnection
from tests.daemonproc import Daemon, start_daemon
from tests.faults.helpers import ECHO, assert_no_crash, redis_env, settings, write_flows
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

# Enough descriptors for a main to start; clients then take the rest.
FILE_LIMIT = 80


async def connect(daemon: Daemon) -> trio.SocketStream:
    host, port = daemon.api.removeprefix("http://").rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def read_to_end(stream: trio.SocketStream) -> bytes:
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


async def ping(stream: trio.SocketStream, *, close: bool = False) -> tuple[int, bytes]:
    """GET /api/v1/ping on a kept-alive connection; (status, body)."""
    extra = b"Connection: close\r\n" if close else b""
    await stream.send_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        received += await stream.receive_some(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += await stream.receive_some(65536)
    return int(head.split(b" ")[1]), body


async def test_a_request_head_must_arrive_within_header_timeout(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = redis_env(redis_server.url, queue_name)
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "main", *settings(server__header_timeout_s=0.5)], env=env, cwd=str(tmp_path)
        ) as main:
            silent = [await connect(main) for _ in range(20)]
            half_sent = [await connect(main) for _ in range(20)]
            for stream in half_sent:
                await stream.send_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            with trio.fail_after(5):  # hypercorn's keep-alive timeout alone was 75 s
                for stream in silent + half_sent:
                    assert await read_to_end(stream) == b""
            assert time.monotonic() - started < 3
            for stream in silent + half_sent:
                await stream.aclose()

            # A trickle (one byte every 0.1 s) does not reset the deadline.
            trickle = await connect(main)
            closed_after = None
            async with trio.open_nursery() as nursery:

                async def send_slowly() -> None:
                    try:
                        for byte in b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n" * 5:
                            await trickle.send_all(bytes([byte]))
                            await trio.sleep(0.1)  # the slow client under test
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

                nursery.start_soon(send_slowly)
                start = time.monotonic()
                with trio.fail_after(5):
                    assert await read_to_end(trickle) == b""
                closed_after = time.monotonic() - start
                nursery.cancel_scope.cancel()
            await trickle.aclose()
            assert closed_after < 3

            # Idle time between requests of a kept-alive connection is not a slow
            # head: it keeps hypercorn's keep-alive timeout.
            client = RawConnection.for_url(main.api)
            try:
                assert (await client.request("GET", "/api/v1/ping"))[0] == 200
                await trio.sleep(1.2)  # idle, longer than the head deadline
                assert (await client.request("GET", "/api/v1/ping"))[0] == 200
            finally:
                await client.aclose()
            assert_no_crash(main)
            assert main.text().count("no complete request head") == 1, main.text()


async def test_connections_past_max_connections_get_503_and_one_log_line(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = redis_env(redis_server.url, queue_name)
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "main", *settings(server__max_connections=4)], env=env, cwd=str(tmp_path)
        ) as main:
            held = [await connect(main) for _ in range(4)]
            for stream in held:
                assert await ping(stream) == (200, b"pong")
            for _ in range(30):
                async with await connect(main) as stream:
                    await stream.send_all(b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    with trio.fail_after(5):
                        answer = await read_to_end(stream)
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503 "), answer
                assert b"Connection: close" in head and b"Retry-After: 1" in head
                refusal = orjson.loads(body)
                assert refusal["statusCode"] == 503 and refusal["success"] is False
                assert "server.max_connections" in refusal["message"]
                assert "4" in refusal["message"]
            # The connections already open still work.
            for stream in held:
                assert await ping(stream) == (200, b"pong")
            # Once they end, new connections are answered normally. The server
            # ends them (Connection: close), so the test knows when they are gone.
            for stream in held:
                assert await ping(stream, close=True) == (200, b"pong")
                with trio.fail_after(5):
                    assert await read_to_end(stream) == b""
                await stream.aclose()
            async with await connect(main) as fresh:
                assert await ping(fresh) == (200, b"pong")
            assert_no_crash(main)
            refusals = [line for line in main.log if "refusing connections" in line]
            assert len(refusals) == 1, main.text()
            assert "server.max_connections" in refusals[0]


async def test_a_cap_above_the_file_limit_is_reported_at_start(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    env = redis_env(redis_server.url, queue_name)
    with trio.fail_after(30):
        async with start_daemon(
            ["--role", "main", *settings(server__max_connections=10**8)], env=env, cwd=str(tmp_path)
        ) as main:
            lines = [line for line in main.log if "does not fit the file limit" in line]
            assert len(lines) == 1, main.text()
            assert "server.max_connections" in lines[0] and "LimitNOFILE" in lines[0]
        async with start_daemon(["--role", "main"], env=env, cwd=str(tmp_path)) as main:
            assert "file limit" not in main.text()


async def test_a_client_that_stops_reading_its_answer_is_cut_off(tmp_path: Path) -> None:
    """hypercorn shields its writes from cancellation: such a client used to hold its
    connection, and the server's shutdown, for as long as it liked."""
    flows = write_flows(tmp_path / "flows", [ECHO])
    args = ["--role", "all", *settings(flows__paths=flows, server__body_timeout_s=1)]
    question = "x" * 3_000_000  # the answer repeats it: megabytes no socket buffer holds
    body = orjson.dumps({"question": question})
    with trio.fail_after(60):
        async with start_daemon(args, cwd=str(tmp_path)) as main:
            host, port = main.api.removeprefix("http://").rsplit(":", 1)
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect((host, int(port)))
            async with trio.SocketStream(sock) as stream:
                await stream.send_all(
                    f"POST /api/v1/prediction/echo HTTP/1.1\r\nHost: {host}\r\n"
                    f"Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await trio.sleep(3)  # the client under test reads nothing for a while
                received = b""
                try:
                    while chunk := await stream.receive_some(1 << 20):
                        received += chunk
                except trio.BrokenResourceError:
                    pass  # reset: the server closed with our unread request bytes pending
            head, _, content = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), received[:300]
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert length > 3 * len(question)
            assert len(content) < length  # cut off, not delivered late
            async with await connect(main) as fresh:
                assert await ping(fresh) == (200, b"pong")
            assert_no_crash(main)


async def test_out_of_file_descriptors_logs_one_line_and_recovers(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    """Past the file limit accept() fails with EMFILE: one warning, no tracebacks,
    and answers again once clients let go."""
    env = redis_env(redis_server.url, queue_name)
    command = ["prlimit", f"--nofile={FILE_LIMIT}:{FILE_LIMIT}", sys.executable, "-m", "flowqd"]
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "main"], env=env, cwd=str(tmp_path), command=command
        ) as main:
            assert "does not fit the file limit" in main.text()
            clients = [await connect(main) for _ in range(FILE_LIMIT + 20)]
            await main.wait_for_log("cannot accept connections")
            for stream in clients:
                await stream.aclose()
            with trio.move_on_after(10) as debug:
                async with await connect(main) as fresh:
                    assert await ping(fresh) == (200, b"pong")
            assert not debug.cancelled_caught, main.text()
            assert_no_crash(main)
            assert main.text().count("cannot accept connections") == 1, main.text()


async def test_connections_the_client_closes_are_released_at_once(
    redis_server: RedisServer, queue_name: str, tmp_path: Path
) -> None:
    """hypercorn held a connection the client had closed until its keep-alive timer
    ran out (75 s), so connect-and-close in a loop ran the server out of descriptors."""
    env = redis_env(redis_server.url, queue_name)
    with trio.fail_after(60):
        async with start_daemon(
            ["--role", "main", *settings(server__max_connections=100)], env=env, cwd=str(tmp_path)
        ) as main:
            clients = [await connect(main) for _ in range(100)]
            for stream in clients[:50]:  # kept alive after an answer
                assert await ping(stream) == (200, b"pong")
            for stream in clients:
                await stream.aclose()
            # Every slot comes free at once: 100 more connections, each closed by its
            # client after an answer, fit (a refusal, 503, is retried on a new one).
            answered = 0
            with trio.fail_after(3):  # the head deadline alone would take 10 s, keep-alive 75
                while answered < 100:
                    async with await connect(main) as stream:
                        status, _ = await ping(stream)
                    answered += status == 200
            assert_no_crash(main)
            assert "no complete request head" not in main.text()

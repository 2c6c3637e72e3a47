"""What goes on the wire: a response head held back to share its body's write
still goes out when there is no body, before the connection closes."""

from __future__ import annotations

import orjson
import trio

from tests.api.conftest import open_api


async def _exchange(url: str, request: bytes) -> bytes:
    """Send ``request``, read until the server closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(request)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return answer


async def test_a_head_request_gets_its_head_before_the_connection_closes() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            answer = await _exchange(
                api.url,
                b"HEAD /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), answer
            assert b"content-length: " in head.lower() and rest == b""


async def test_kept_alive_answers_with_and_without_bodies_follow_each_other() -> None:
    ping = b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    head = b"HEAD /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = b'{"question": "wire"}'
    predict = (
        b"POST /api/v1/prediction/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body)
    )
    with trio.fail_after(15):
        async with open_api() as api:
            answer = await _exchange(api.url, ping + head + ping + predict)
    # Bodies are not line-terminated: the next head follows "pong" directly.
    assert answer.count(b"HTTP/1.1 ") == 4 and answer.count(b"HTTP/1.1 200 ") == 4, answer
    assert orjson.loads(answer.rpartition(b"\r\n\r\n")[2])["text"] == "wire"

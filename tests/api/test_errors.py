"""Limits and errors: every status is JSON a person can act on, and no input makes a 500."""

from __future__ import annotations

import random
from typing import Any

import orjson
import trio

from flowqd.jobs import JobStatus
from tests.api.conftest import Api, open_api

JSON = {"Content-Type": "application/json"}
ROUTES = [
    ("POST", "/api/v1/prediction/echo"),
    ("POST", "/api/v1/prediction/greet"),
    ("POST", "/api/v1/jobs"),
    ("PUT", "/api/v1/flows/fuzz"),
    ("PUT", "/api/v1/credentials/fuzz"),
]


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["statusCode"] == status and body["success"] is False
    assert isinstance(body["message"], str) and len(body["message"]) > 20
    return body


async def test_malformed_json_is_400_naming_the_position() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            for method, path in ROUTES:
                response = await api.client.request(
                    method, path, content=b'{"question": hi}', headers=JSON
                )
                body = assert_error(response, 400)
                assert "line 1, column 14" in body["message"], body
            empty = await api.client.post("/api/v1/prediction/echo", content=b"", headers=JSON)
            assert "empty" in assert_error(empty, 400)["message"]


async def test_body_over_the_limit_is_413() -> None:
    with trio.fail_after(15):
        async with open_api("server.max_body_bytes=1000") as api:
            big = orjson.dumps({"question": "x" * 2000})
            for method, path in ROUTES:
                response = await api.client.request(method, path, content=big, headers=JSON)
                assert "server.max_body_bytes" in assert_error(response, 413)["message"]

            # Without a Content-Length (chunked) the limit holds as well.
            async def chunks() -> Any:
                for _ in range(10):
                    yield b" " * 500

            chunked = await api.client.post(
                "/api/v1/prediction/echo", content=chunks(), headers=JSON
            )
            assert_error(chunked, 413)
            small = await api.client.post("/api/v1/prediction/echo", json={"question": "ok"})
            assert small.status_code == 200


async def test_unknown_routes_and_methods() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            assert (
                "openapi.json" in assert_error(await api.client.get("/api/v1/nope"), 404)["message"]
            )
            body = assert_error(await api.client.delete("/api/v1/prediction/echo"), 405)
            assert "POST" in body["message"]


async def test_bodies_that_are_not_objects_are_422() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            for method, path in ROUTES:
                for body in (b"[]", b'"text"', b"3", b"null"):
                    response = await api.client.request(method, path, content=body, headers=JSON)
                    assert_error(response, 422)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 1e308, -0.0, 3.5])
    if kind in (3, 4, 5):
        return rng.choice(
            [
                "",
                "q",
                "\u0000",
                "é" * 50,
                "$question",
                "{x}",
                "a" * 300,
                "../../etc",
                "echo",
                "greet",
                "slow",
                "0-0",
            ]
        )
    if kind in (6, 7):
        keys = [
            "question",
            "streaming",
            "overrideConfig",
            "chatId",
            "history",
            "flow",
            "inputs",
            "jobs",
            "job_id",
            "delay_s",
            "max_attempts",
            "timeout_s",
            "value",
            "nodes",
            "output",
            "id",
            "params",
            "type",
            "sessionId",
            "uploads",
            "form",
        ]
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(6))}
    return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


async def test_no_input_produces_a_500() -> None:
    """Random documents on every route that takes a body; seeded, so a failure repeats."""
    rng = random.Random(5)
    with trio.fail_after(60):
        async with open_api("server.prediction_timeout_s=0.2") as api:
            for _ in range(150):
                method, path = rng.choice(ROUTES)
                body = random_json(rng)
                if isinstance(body, dict) and path.endswith("/jobs") and rng.random() < 0.5:
                    body["flow"] = rng.choice(["echo", "greet", "topic"])
                await _check(api, method, path, orjson.dumps(body))
            nested = b"[" * 5000 + b"]" * 5000
            for method, path in ROUTES:
                await _check(api, method, path, nested)
                await _check(api, method, path, b"\xff\xfe garbage")
                await _check(api, method, path, b'{"question": 1e999999}')


async def _check(api: Api, method: str, path: str, content: bytes) -> None:
    response = await api.client.request(method, path, content=content, headers=JSON)
    # 500 is only ever a failed job (a node that raised), and 504 a deadline.
    if response.status_code == 500:
        assert "failed" in response.json()["message"], response.text
    else:
        assert response.status_code < 500 or response.status_code == 504, (
            content[:200],
            response.text,
        )
    if response.status_code >= 400:
        assert response.json()["success"] is False


async def test_broker_unreachable_is_503_within_a_second() -> None:
    from tests.redisproc import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    with trio.fail_after(30):
        async with open_api(environ={"REDIS_URL": dead}, worker=False, flows=[]) as api:
            for method, path, body in [
                ("POST", "/api/v1/prediction/echo", {"question": "q"}),
                ("POST", "/api/v1/jobs", {"flow": "echo"}),
                ("GET", "/api/v1/jobs/x", None),
                ("GET", "/api/v1/flows", None),
                ("GET", "/api/v1/queue", None),
            ]:
                with trio.fail_after(2):  # answered, never a hang
                    response = await api.client.request(method, path, json=body)
                body = assert_error(response, 503)
                assert "redis.url" in body["message"]
                assert response.headers["retry-after"] == "1"


def nested(depth: int) -> Any:
    """Arrays and objects in turn, ``depth`` levels deep."""
    value: Any = "deep"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


async def test_json_nested_past_max_json_depth_is_400_on_every_route() -> None:
    """orjson reads 254+ levels but cannot write them back: that was a 500."""
    with trio.fail_after(30):
        async with open_api("dashboard.enabled=true") as api:
            routes = [*ROUTES, ("POST", "/admin/queues/session")]
            dashboard = {"X-Flowqd-CSRF": "1", "Sec-Fetch-Site": "same-origin"}
            for depth in (65, 300, 2000):
                for method, path in routes:
                    body = {
                        "question": "q",
                        "flow": "echo",
                        "value": "v",
                        "key": "k",
                        "overrideConfig": nested(depth),
                    }
                    raw = (
                        orjson.dumps(body)
                        if depth < 255
                        else b'{"question":"q","overrideConfig":'
                        + b"[" * depth
                        + b"]" * depth
                        + b"}"
                    )
                    response = await api.client.request(
                        method, path, content=raw, headers={**JSON, **dashboard}
                    )
                    message = assert_error(response, 400)["message"]
                    assert "server.max_json_depth" in message and "64" in message, (
                        depth,
                        path,
                        message,
                    )
            # At the limit the document is read (and the job carries it).
            ok = await api.client.post(
                "/api/v1/jobs",
                json={"flow": "echo", "inputs": {"question": "q", "deep": nested(62)}},
            )
            assert ok.status_code == 202, ok.text
            # Brackets inside strings are not nesting.
            text = await api.client.post("/api/v1/prediction/echo", json={"question": "[{" * 500})
            assert text.status_code == 200 and text.json()["text"] == "[{" * 500


async def test_max_json_depth_is_configurable() -> None:
    with trio.fail_after(15):
        async with open_api("server.max_json_depth=3") as api:
            three = await api.client.post(
                "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "q", "x": [1]}}
            )
            assert three.status_code == 202, three.text
            four = await api.client.post(
                "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "q", "x": [[1]]}}
            )
            assert "more than 3 levels" in assert_error(four, 400)["message"]


async def test_bodies_not_sent_as_json_are_415() -> None:
    """text/plain and forms are what any web page may post cross-site without asking."""
    body = orjson.dumps({"question": "q", "flow": "echo", "value": "v"})
    with trio.fail_after(15):
        async with open_api() as api:
            for method, path in ROUTES:
                for sent, named in (
                    ("text/plain", "Content-Type: text/plain"),
                    ("text/plain;charset=UTF-8", "Content-Type: text/plain"),
                    (
                        "application/x-www-form-urlencoded",
                        "Content-Type: application/x-www-form-urlencoded",
                    ),
                    ("multipart/form-data; boundary=x", "Content-Type: multipart/form-data"),
                    (None, "no Content-Type"),
                ):
                    headers = {"Content-Type": sent} if sent else {}
                    response = await api.client.request(method, path, content=body, headers=headers)
                    message = assert_error(response, 415)["message"]
                    assert named in message and "application/json" in message, message
                    assert response.headers["connection"] == "close"  # body left unread
            assert (await api.broker.control.counts())[JobStatus.WAITING] == 0
            for sent in (
                "application/json; charset=utf-8",
                "Application/JSON",
                "application/vnd.api+json",
            ):
                response = await api.client.post(
                    "/api/v1/prediction/echo", content=body, headers={"Content-Type": sent}
                )
                assert response.status_code == 200, (sent, response.text)


async def test_body_that_stops_arriving_is_408_and_the_connection_closes() -> None:
    with trio.fail_after(15):
        async with open_api("server.body_timeout_s=0.5") as api:
            host, port = api.url.removeprefix("http://").rsplit(":", 1)
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(
                    f"POST /api/v1/prediction/echo HTTP/1.1\r\nHost: {host}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                    '{"question": '.encode()
                )
                answer = b""
                with trio.fail_after(5):  # the old default waited 60 s
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
            head, _, content = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), answer
            assert b"connection: close" in head.lower()
            body = orjson.loads(content)
            assert body["statusCode"] == 408 and "server.body_timeout_s" in body["message"]
            # A body sent in time is read as before.
            ok = await api.client.post("/api/v1/prediction/echo", json={"question": "q"})
            assert ok.status_code == 200

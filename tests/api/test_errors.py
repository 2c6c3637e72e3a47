"""Limits and errors: every status is JSON a person can act on, and no input makes a 500."""

from __future__ import annotations

import random
from typing import Any

import orjson
import trio

from tests.api.conftest import Api, open_api

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
                response = await api.client.request(method, path, content=b'{"question": hi}')
                body = assert_error(response, 400)
                assert "line 1, column 14" in body["message"], body
            empty = await api.client.post("/api/v1/prediction/echo", content=b"")
            assert "empty" in assert_error(empty, 400)["message"]


async def test_body_over_the_limit_is_413() -> None:
    with trio.fail_after(15):
        async with open_api("server.max_body_bytes=1000") as api:
            big = orjson.dumps({"question": "x" * 2000})
            for method, path in ROUTES:
                response = await api.client.request(method, path, content=big)
                assert "server.max_body_bytes" in assert_error(response, 413)["message"]

            # Without a Content-Length (chunked) the limit holds as well.
            async def chunks() -> Any:
                for _ in range(10):
                    yield b" " * 500

            chunked = await api.client.post("/api/v1/prediction/echo", content=chunks())
            assert_error(chunked, 413)
            small = await api.client.post("/api/v1/prediction/echo", json={"question": "ok"})
            assert small.status_code == 200


async def test_unknown_routes_and_methods() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            assert "openapi.json" in assert_error(await api.client.get("/api/v1/nope"),
                                                  404)["message"]
            body = assert_error(await api.client.delete("/api/v1/prediction/echo"), 405)
            assert "POST" in body["message"]


async def test_bodies_that_are_not_objects_are_422() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            for method, path in ROUTES:
                for body in (b"[]", b'"text"', b"3", b"null"):
                    response = await api.client.request(method, path, content=body)
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
        return rng.choice(["", "q", "\u0000", "é" * 50, "$question", "{x}", "a" * 300,
                           "../../etc", "echo", "greet", "slow", "0-0"])
    if kind in (6, 7):
        keys = ["question", "streaming", "overrideConfig", "chatId", "history", "flow",
                "inputs", "jobs", "job_id", "delay_s", "max_attempts", "timeout_s", "value",
                "nodes", "output", "id", "params", "type", "sessionId", "uploads", "form"]
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
    response = await api.client.request(method, path, content=content)
    # 500 is only ever a failed job (a node that raised), and 504 a deadline.
    if response.status_code == 500:
        assert "failed" in response.json()["message"], response.text
    else:
        assert response.status_code < 500 or response.status_code == 504, (
            content[:200], response.text)
    if response.status_code >= 400:
        assert response.json()["success"] is False


async def test_broker_unreachable_is_503_within_a_second() -> None:
    from tests.redisproc import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    with trio.fail_after(30):
        async with open_api(environ={"REDIS_URL": dead}, worker=False, flows=[]) as api:
            for method, path, body in [("POST", "/api/v1/prediction/echo", {"question": "q"}),
                                       ("POST", "/api/v1/jobs", {"flow": "echo"}),
                                       ("GET", "/api/v1/jobs/x", None),
                                       ("GET", "/api/v1/flows", None),
                                       ("GET", "/api/v1/queue", None)]:
                with trio.fail_after(2):  # answered, never a hang
                    response = await api.client.request(method, path, json=body)
                body = assert_error(response, 503)
                assert "redis.url" in body["message"]
                assert response.headers["retry-after"] == "1"

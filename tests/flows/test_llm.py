"""The llm executor against a small OpenAI-compatible server on loopback."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from flowqd import Executor, NodeError
from flowqd.flows import NodeFailed
from flowqd.testing import run_executor, run_flow_document
from tests.flows.httpserver import (
    Handler,
    Request,
    chunk,
    open_http_server,
    send_head,
    send_json,
    streaming_llm,
)


def params(url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": f"{url}/v1", "model": "test-model", **extra}


def stream_of(*raw: bytes, stall: bool = False) -> Handler:
    async def handler(request: Request, stream: trio.SocketStream) -> None:
        await send_head(stream, 200, [("Content-Type", "text/event-stream")])
        for part in raw:
            await stream.send_all(part)
        if stall:
            await trio.sleep_forever()

    return handler


async def test_flow_streams_tokens_in_order(executors: dict[str, Executor]) -> None:
    tokens = ["Hel", "lo", ", ", "Ann", "!"]
    with trio.fail_after(10):
        async with open_http_server(streaming_llm(tokens)) as server:
            document = {
                "id": "greet",
                "nodes": [
                    {
                        "id": "prompt",
                        "type": "template",
                        "params": {"template": "Say hello to {question}"},
                    },
                    {
                        "id": "answer",
                        "type": "llm",
                        "inputs": {"prompt": "prompt"},
                        "params": params(
                            server.url,
                            credential="openai",
                            system="Be brief.",
                            temperature=0.5,
                            max_tokens=20,
                        ),
                    },
                ],
                "output": "answer",
            }
            result, events = await run_flow_document(
                document, "Ann", executors=executors, credentials={"openai": "sk-test"}
            )
    assert result.output == "Hello, Ann!"
    answer_events = [(n, d if n == "token" else d["node"]) for n, d in events[2:]]
    assert answer_events == [
        ("node_start", "answer"),
        *[("token", t) for t in tokens],
        ("node_end", "answer"),
    ]
    [request] = server.requests
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json() == {
        "model": "test-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "max_tokens": 20,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello to Ann"},
        ],
    }
    assert "sk-test" not in repr(events) and "sk-test" not in repr(result)


async def test_messages_param_without_prompt(executors: dict[str, Executor]) -> None:
    with trio.fail_after(10):
        async with open_http_server(streaming_llm(["ok"])) as server:
            output, events = await run_executor(
                executors["llm"],
                params(server.url, messages=[{"role": "user", "content": "hi"}]),
            )
    assert output == "ok" and events == [("token", "ok")]
    assert server.requests[0].json()["messages"] == [{"role": "user", "content": "hi"}]
    assert "authorization" not in server.requests[0].headers


async def test_server_error_is_a_clear_job_error(executors: dict[str, Executor]) -> None:
    async def overloaded(request: Request, stream: trio.SocketStream) -> None:
        await send_json(stream, 500, {"error": {"message": "model overloaded", "type": "server"}})

    with trio.fail_after(10):
        async with open_http_server(overloaded) as server:
            document = {
                "id": "f",
                "nodes": [
                    {
                        "id": "answer",
                        "type": "llm",
                        "params": params(server.url),
                        "inputs": {"prompt": "$question"},
                    }
                ],
                "output": "answer",
            }
            with pytest.raises(NodeFailed) as info:
                await run_flow_document(document, "hi", executors=executors)
    assert info.value.node_id == "answer"
    assert info.value.message == (f"LLM server {server.url}/v1 answered HTTP 500: model overloaded")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (chunk("a") + b"data: {not json\n\n", "sent a malformed stream: not JSON: '{not json'"),
        (
            chunk("a") + b"data: [1, 2]\n\n",
            "sent a malformed stream: expected objects, got '[1, 2]'",
        ),
        (
            b'data: {"object": "chunk"}\n\n',
            'sent a malformed stream: no choices in \'{"object": "chunk"}\'',
        ),
        (b"<html>oops</html>\n\n", "sent a malformed stream: unexpected line '<html>oops</html>'"),
        (
            b'data: {"error": {"message": "context too long"}}\n\n',
            "reported an error mid-stream: context too long",
        ),
        (
            chunk("a") + chunk("b"),
            "ended the stream before [DONE] or a finish_reason, after 2 tokens: "
            "the answer is cut short",
        ),
    ],
    ids=["not-json", "not-object", "no-choices", "junk-line", "error-event", "cut-short"],
)
async def test_malformed_stream(executors: dict[str, Executor], raw: bytes, message: str) -> None:
    with trio.fail_after(10):
        async with open_http_server(stream_of(raw)) as server:
            with pytest.raises(NodeError) as info:
                await run_executor(executors["llm"], params(server.url), {"prompt": "hi"})
    assert str(info.value) == f"LLM server {server.url}/v1 {message}"


async def test_timeout_mid_stream(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    async with open_http_server(stream_of(chunk("first"), stall=True)) as server:
        start = trio.current_time()
        with pytest.raises(NodeError) as info:
            await run_executor(executors["llm"], params(server.url, timeout_s=30), {"prompt": "hi"})
        assert trio.current_time() - start == pytest.approx(30)
    assert str(info.value) == (
        f"LLM server {server.url}/v1 did not finish within 30 s (params.timeout_s, model "
        "'test-model'); 1 tokens had arrived"
    )


async def test_server_that_ignores_stream_true(executors: dict[str, Executor]) -> None:
    async def whole(request: Request, stream: trio.SocketStream) -> None:
        await send_json(
            stream, 200, {"choices": [{"message": {"role": "assistant", "content": "all at once"}}]}
        )

    with trio.fail_after(10):
        async with open_http_server(whole) as server:
            output, events = await run_executor(
                executors["llm"], params(server.url), {"prompt": "x"}
            )
    assert output == "all at once" and events == [("token", "all at once")]


async def test_missing_credential(executors: dict[str, Executor]) -> None:
    with pytest.raises(Exception, match="credential 'openai' is not stored"):
        await run_executor(
            executors["llm"], params("http://127.0.0.1:9", credential="openai"), {"prompt": "x"}
        )


async def test_stops_reading_at_done_or_error_even_if_the_server_lingers(
    executors: dict[str, Executor],
) -> None:
    lingering_ok = stream_of(chunk("a") + b"data: [DONE]\n\n", stall=True)
    lingering_bad = stream_of(chunk("a") + b"data: {oops\n\n", stall=True)
    with trio.fail_after(10):
        async with open_http_server(lingering_ok) as server:
            output, _ = await run_executor(executors["llm"], params(server.url), {"prompt": "x"})
            assert output == "a"
        async with open_http_server(lingering_bad) as server:
            with pytest.raises(NodeError, match="malformed stream"):
                await run_executor(executors["llm"], params(server.url), {"prompt": "x"})

"""Built-in executors: echo, delay, template, http (against a loopback server)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from flowqd import Executor, FlowValidationError, NodeError
from flowqd.testing import NodeFailed, run_executor, run_flow_document
from tests.flows.httpserver import Request, open_http_server, send_head, send_json


async def test_echo(executors: dict[str, Executor]) -> None:
    echo = executors["echo"]
    assert await run_executor(echo, {}, {"x": [1, 2]}) == ([1, 2], [])
    assert await run_executor(echo, {}, question="hi") == ("hi", [])
    with pytest.raises(NodeError, match="echo node has no input and the job has no question"):
        await run_executor(echo)


async def test_delay_sleeps_and_is_cancellable(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    assert await run_executor(executors["delay"], {"ms": 1500}, {"x": "v"}) == ("v", [])
    assert trio.current_time() - start == pytest.approx(1.5)
    with trio.move_on_after(1):
        await run_executor(executors["delay"], {"ms": 3_600_000}, question="q")
    assert trio.current_time() - start == pytest.approx(2.5)


async def test_template(executors: dict[str, Executor]) -> None:
    template = executors["template"]
    output, _ = await run_executor(
        template,
        {"template": "{greeting}, {question}! {data} {missing_is_none}{{literal}} {n:03d}"},
        {"greeting": "Hello", "data": {"a": [1]}, "missing_is_none": None, "n": 7},
        question="Ann",
    )
    assert output == 'Hello, Ann! {"a":[1]} {literal} 007'
    # Node inputs win over job inputs of the same name.
    assert (
        await run_executor(template, {"template": "{question}"}, {"question": "in"}, question="job")
    )[0] == "in"


async def test_template_placeholder_without_value(executors: dict[str, Executor]) -> None:
    with pytest.raises(NodeError) as info:
        await run_executor(executors["template"], {"template": "Hi {name}"}, {"x": 1}, question="q")
    assert str(info.value) == (
        "template placeholder {name} has no value: it is neither an input of this node "
        "(inputs: x) nor a job input (given: question)"
    )
    with pytest.raises(FlowValidationError) as bad:
        await run_executor(executors["template"], {"template": "Hi {0}"})
    assert bad.value.problems == [
        (
            "params.template",
            "placeholder {0} needs a name: use {question} or an input's name "
            "(write {{ and }} for literal braces)",
        )
    ]


async def _api(request: Request, stream: trio.SocketStream) -> None:
    if request.path == "/json":
        await send_json(
            stream,
            200,
            {
                "method": request.method,
                "body": request.body.decode(),
                "auth": request.headers.get("authorization"),
                "x": request.headers.get("x-test"),
            },
        )
    elif request.path == "/text":
        await send_head(stream, 200, [("Content-Type", "text/plain")])
        await stream.send_all(b"plain words")
    elif request.path == "/stall":
        await trio.sleep_forever()
    else:
        await send_json(stream, 404, {"error": "no such thing"})


async def test_http_get_post_and_statuses(executors: dict[str, Executor]) -> None:
    http = executors["http"]
    with trio.fail_after(10):
        async with open_http_server(_api) as server:
            output, _ = await run_executor(
                http, {"url": f"{server.url}/json", "headers": {"X-Test": "1"}}
            )
            assert output["status"] == 200
            assert output["headers"]["content-type"] == "application/json"
            assert output["json"] == {"method": "GET", "body": "", "auth": None, "x": "1"}

            output, _ = await run_executor(
                http,
                {"url": f"{server.url}/json", "method": "POST", "credential": "svc"},
                {"json": {"q": 1}},
                credentials={"svc": "s3cret"},
            )
            assert output["json"]["method"] == "POST"
            assert output["json"]["body"] == '{"q":1}'
            assert output["json"]["auth"] == "Bearer s3cret"

            output, _ = await run_executor(http, {"url": f"{server.url}/text"})
            assert output == {"status": 200, "text": "plain words", "headers": output["headers"]}

            with pytest.raises(NodeError) as info:
                await run_executor(http, {"url": f"{server.url}/missing?token=abc"})
            assert str(info.value) == (
                f"GET {server.url}/missing answered HTTP 404 Not Found: "
                '\'{"error":"no such thing"}\'; add the status to params.allow_status if '
                "it is expected"
            )
            output, _ = await run_executor(
                http, {"url": f"{server.url}/missing", "allow_status": [404]}
            )
            assert output["status"] == 404 and output["json"] == {"error": "no such thing"}


async def test_http_timeout(
    executors: dict[str, Executor], autojump_clock: trio.testing.MockClock
) -> None:
    async with open_http_server(_api) as server:
        with pytest.raises(NodeError) as info:
            await run_executor(executors["http"], {"url": f"{server.url}/stall", "timeout_s": 3})
    assert str(info.value) == f"GET {server.url}/stall did not answer within 3 s (params.timeout_s)"


async def test_http_unreachable(executors: dict[str, Executor]) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # a port nobody listens on
    with (
        trio.fail_after(10),
        pytest.raises(NodeError, match=r"GET http://127\.0\.0\.1:\d+/ failed: ConnectError"),
    ):
        await run_executor(executors["http"], {"url": f"http://127.0.0.1:{port}/"})


async def test_template_never_reads_attributes_of_values() -> None:
    # str.format would happily walk {question.__class__...}; a template that
    # tries is a node error, and dict keys / list indexes still work.
    params = {"template": "{question.__class__}"}
    with pytest.raises(NodeFailed, match="has no value"):
        await run_flow_document(
            {"id": "t", "nodes": [{"id": "t", "type": "template", "params": params}],
             "output": "t"},
            question="hi",
        )
    nested = {"template": "{overrideConfig.lang}/{overrideConfig.tags[1]}"}
    result, _ = await run_flow_document(
        {"id": "t", "nodes": [{"id": "t", "type": "template", "params": nested}], "output": "t"},
        inputs={"question": "hi", "overrideConfig": {"lang": "fr", "tags": ["a", "b"]}},
    )
    assert result.output == "fr/b"

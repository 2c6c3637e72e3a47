"""Built-in executors: echo, delay, template, http (against a loopback server)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from flowqd import Executor, FlowValidationError, NodeError
from flowqd.flows import compile_flow
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
    # Registration rules out names no input gives; a job may still lack a job input.
    with pytest.raises(NodeError) as info:
        await run_executor(executors["template"], {"template": "Hi {question}"}, {"x": 1})
    assert str(info.value) == (
        "template placeholder {question} has no value: it is neither an input of this node "
        "(inputs: x) nor a job input (given: none)"
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
            {
                "id": "t",
                "nodes": [{"id": "t", "type": "template", "params": params}],
                "output": "t",
            },
            question="hi",
        )
    nested = {"template": "{overrideConfig.lang}/{overrideConfig.tags[1]}"}
    result, _ = await run_flow_document(
        {"id": "t", "nodes": [{"id": "t", "type": "template", "params": nested}], "output": "t"},
        inputs={"question": "hi", "overrideConfig": {"lang": "fr", "tags": ["a", "b"]}},
    )
    assert result.output == "fr/b"


async def test_template_placeholders_are_checked_at_registration(
    executors: dict[str, Executor],
) -> None:
    node = {"id": "t", "type": "template", "inputs": {"name": "$name", "n": "$n"}}
    document = {"id": "t", "nodes": [node], "output": "t"}
    node["params"] = {"template": "Hi {nme} {nme.x} {name} {question} {overrideConfig[lang]}"}
    with pytest.raises(FlowValidationError) as info:
        compile_flow(document, executors)
    assert info.value.problems == [
        (
            "$.nodes[0].params.template",
            "placeholder {nme} has no value: a template reads this node's inputs (n, name) and "
            "the job inputs question, overrideConfig, history, chatId, sessionId; to read "
            'another job input add "nme": "$nme" to the node\'s inputs',
        )
    ]
    node["params"] = {"template": "{n:>{width}}"}  # nested placeholders are names too
    with pytest.raises(FlowValidationError, match=r"placeholder \{width\} has no value"):
        compile_flow(document, executors)
    node["params"] = {"template": "{name} {history} {chatId} {sessionId} {n:0>5}"}
    result, _ = await run_flow_document(
        document, inputs={"name": "Ann", "n": 7, "history": [], "chatId": "c", "sessionId": "s"}
    )
    assert result.output == "Ann [] c s 00007"


@pytest.mark.parametrize(
    ("template", "number"),
    [
        ("{question:>200000000}", "200000000"),
        ("{question:.10001}", "10001"),
        ("{question:x^+#010001,.2f}", "010001"),
        ("{question:" + "9" * 5000 + "}", "9" * 17 + "..."),
    ],
)
async def test_template_widths_are_bounded_at_registration(
    executors: dict[str, Executor], template: str, number: str
) -> None:
    node = {"id": "t", "type": "template", "params": {"template": template}}
    document = {"id": "t", "nodes": [node], "output": "t"}
    with pytest.raises(FlowValidationError) as info:
        compile_flow(document, executors)
    [(path, message)] = info.value.problems
    assert path == "$.nodes[0].params.template"
    assert message.endswith(f"asks for a width or precision of {number}; at most 10000 is allowed")
    assert message.startswith("placeholder {question:")


async def test_template_width_from_a_nested_placeholder_is_bounded_when_rendered(
    executors: dict[str, Executor],
) -> None:
    template = executors["template"]
    params = {"template": "[{question:>{w}}]"}
    assert (await run_executor(template, params, {"w": 10_000}, question="q"))[0] == (
        "[" + " " * 9_999 + "q]"
    )
    with pytest.raises(NodeError) as info:
        await run_executor(template, params, {"w": 200_000_000}, question="q")
    assert str(info.value) == (
        "template format spec '>200000000' asks for a width or precision over 10000"
    )

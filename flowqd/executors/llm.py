"""``llm``: OpenAI-compatible chat completions, streamed token by token.

Works with any server speaking ``POST {base_url}/chat/completions`` with
``"stream": true`` and server-sent events (OpenAI, vLLM, llama.cpp server,
Ollama, LiteLLM...). Each content delta becomes one ``token`` event.

A node offered tools (its ``tools`` field) sends them as OpenAI ``tools``;
when the model asks for calls, they run one after another (``ctx.call_tool``)
and their results go back to the model, for at most ``params.max_tool_rounds``
rounds. Token usage, when the server reports it, is recorded on the node.
With ``params.memory = {"turns": N}`` the job's conversation (``ctx.history``:
the request's history, then the session's last N turns) goes between the
params' messages and the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from typing import Any

import attrs
import httpx
import orjson
import trio

from flowqd import Executor, NodeContext, NodeError, hookimpl
from flowqd.executors._http import (
    Lines,
    check_url,
    consume_until,
    error_text,
    open_client,
    read_some,
    read_within,
    shown_url,
)
from flowqd.executors.base import Tool
from flowqd.redaction import Redactor

MAX_CALLS_PER_ROUND = 16  # tool calls of one answer, at most
_optional = attrs.validators.optional
_ge, _gt = attrs.validators.ge, attrs.validators.gt


@attrs.frozen
class Message:
    role: str
    content: str


@attrs.frozen
class LlmMemory:
    # The conversation's last turns sent (ctx.history), after the params' messages.
    turns: int = attrs.field(default=10, validator=[_ge(1), attrs.validators.le(1000)])


@attrs.frozen
class LlmParams:
    base_url: str  # e.g. "http://127.0.0.1:8000/v1"
    model: str
    messages: list[Message] = attrs.Factory(list)  # sent before the prompt input
    system: str | None = None  # a system message sent first
    temperature: float | None = attrs.field(default=None, validator=_optional(_ge(0)))
    max_tokens: int | None = attrs.field(default=None, validator=_optional(_gt(0)))
    credential: str | None = None  # stored credential holding the API key
    timeout_s: float = attrs.field(default=120.0, validator=attrs.validators.gt(0))  # per request
    # Requests answered with tool calls, at most; one more fails the node.
    max_tool_rounds: int = attrs.field(default=4, validator=[_ge(1), attrs.validators.le(50)])
    # Ask for the usage chunk (stream_options.include_usage); off for servers
    # that reject the option.
    stream_usage: bool = True
    # {"turns": N}: send the last N turns of the job's conversation (and the
    # request's history) between the messages above and the prompt.
    memory: LlmMemory | None = None


def check_llm(params: LlmParams, inputs: Set[str]) -> Iterator[tuple[str, str]]:
    yield from check_url(params.base_url, "params.base_url")
    if not params.messages and "prompt" not in inputs:
        yield "inputs", "llm needs an input named 'prompt' or params.messages"
    for name in sorted(inputs - {"prompt"}):
        yield f"inputs.{name}", "llm takes only an input named 'prompt'"


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return "" if value is None else str(value)


class _Call:
    """One tool call the model asked for, as its pieces arrive."""

    def __init__(self, index: int) -> None:
        self.id = f"call_{index}"  # replaced by the server's id, if it sends one
        self.name = ""
        self.arguments: list[str] = []


class _Answer:
    """The text so far, the tool calls asked for, usage, and how the stream ended."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.done = False  # [DONE] seen
        self.finish_reason: str | None = None
        self.calls: dict[int, _Call] = {}  # by the stream's index
        self.usage: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


async def run_llm(ctx: NodeContext) -> str:
    params: LlmParams = ctx.params
    messages = await _messages(ctx, params)
    body: dict[str, Any] = {"model": params.model, "messages": messages, "stream": True}
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.stream_usage:
        body["stream_options"] = {"include_usage": True}
    if ctx.tools:
        body["tools"] = [_tool_json(tool) for tool in ctx.tools]
    headers = {"Accept": "text/event-stream"}
    redactor = Redactor()
    if params.credential is not None:
        key = await ctx.credential(params.credential)
        headers["Authorization"] = f"Bearer {key}"
        redactor.add(params.credential, key)
    server = f"LLM server {shown_url(params.base_url)}"
    rounds = 0
    # The text of every round, as its tokens streamed: text a model writes
    # before asking for tools stays part of the answer clients assembled.
    said: list[str] = []
    while True:
        answer = await _ask(ctx, body, headers, server, redactor)
        said.append(answer.text)
        if answer.usage is not None:
            _record_usage(ctx, answer.usage)
        if not ctx.tools or not answer.calls:
            if ctx.tools and answer.finish_reason == "tool_calls":
                raise NodeError(f"{server} ended with finish_reason tool_calls but sent no calls")
            return "".join(said)
        if rounds == params.max_tool_rounds:
            raise NodeError(
                f"the model asked for tools after {rounds} rounds of tool calls, the most "
                f"params.max_tool_rounds allows; raise it, or make the tools answer in fewer "
                f"(last asked: {', '.join(repr(c.name) for c in answer.calls.values())})"
            )
        rounds += 1
        await _run_calls(ctx, answer, messages, server)


async def _messages(ctx: NodeContext, params: LlmParams) -> list[dict[str, Any]]:
    """System message, params.messages, the conversation (params.memory), the prompt."""
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": params.system}] if params.system else []
    )
    messages += [attrs.asdict(m) for m in params.messages]
    if params.memory is not None:
        messages += await ctx.history(turns=params.memory.turns)
    if "prompt" in ctx.inputs:
        messages.append({"role": "user", "content": _as_text(ctx.inputs["prompt"])})
    return messages


async def _ask(
    ctx: NodeContext, body: dict[str, Any], headers: dict[str, str], server: str, redactor: Redactor
) -> _Answer:
    """One request: the model's answer, its tokens streamed as they arrive."""
    params: LlmParams = ctx.params
    answer = _Answer()
    with trio.move_on_after(params.timeout_s):
        try:
            async with open_client(params.timeout_s) as client:
                url = params.base_url.rstrip("/") + "/chat/completions"
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    await _read_answer(ctx, response, answer, server, redactor)
                    return answer
        except httpx.TimeoutException:
            pass
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise NodeError(f"{server}: request failed: {type(exc).__name__}: {exc}") from None
    raise NodeError(
        f"{server} did not finish within {params.timeout_s:g} s (params.timeout_s, model "
        f"{params.model!r}); {len(answer.parts)} tokens had arrived"
    )


def _tool_json(tool: Tool) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description}
    return {"type": "function", "function": {**function, "parameters": tool.parameters}}


def _record_usage(ctx: NodeContext, usage: dict[str, Any]) -> None:
    """OpenAI's ``usage`` (prompt_tokens, completion_tokens, total_tokens) on the record."""
    counts = [usage.get(key, 0) for key in ("prompt_tokens", "completion_tokens", "total_tokens")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        # Bookkeeping, not the answer: a server's odd usage must not fail the node.
        return
    ctx.record_usage(counts[0], counts[1], counts[2] or counts[0] + counts[1])


async def _run_calls(
    ctx: NodeContext, answer: _Answer, messages: list[dict[str, Any]], server: str
) -> None:
    """Run the calls the model asked for; add them and their results to ``messages``.

    One after another, in the model's order: a call's events and record are
    never interleaved with another's, and a tool's tokens are told apart from
    the next one's; tools that take long belong in a flow of their own.
    """
    calls = list(answer.calls.values())
    if len(calls) > MAX_CALLS_PER_ROUND:
        raise NodeError(
            f"{server}: the model asked for {len(calls)} tool calls at once, more than "
            f"{MAX_CALLS_PER_ROUND}"
        )
    messages.append(
        {
            "role": "assistant",
            "content": answer.text or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for call in calls
            ],
        }
    )
    for call in calls:
        content = await _run_call(ctx, call)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": content})


async def _run_call(ctx: NodeContext, call: _Call) -> str:
    """The text sent back for one call: the tool's output, or what went wrong."""
    if not any(tool.name == call.name for tool in ctx.tools):
        offered = ", ".join(tool.name for tool in ctx.tools)
        return _tool_error(f"there is no tool {call.name!r}; the tools are: {offered}")
    text = "".join(call.arguments).strip() or "{}"
    try:
        arguments = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _tool_error(f"the arguments of {call.name!r} are not JSON: {text[:200]!r}")
    if not isinstance(arguments, dict):
        return _tool_error(
            f"the arguments of {call.name!r} must be a JSON object, got {text[:200]}"
        )
    try:
        return _as_text(await ctx.call_tool(call.name, arguments))
    except NodeError as exc:
        return _tool_error(str(exc))


def _tool_error(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


async def _read_answer(
    ctx: NodeContext,
    response: httpx.Response,
    answer: _Answer,
    server: str,
    redactor: Redactor,
) -> None:
    if not 200 <= response.status_code < 300:
        detail = error_text(redactor.bytes(await read_some(response)))
        raise NodeError(f"{server} answered HTTP {response.status_code}: {detail}")
    if "text/event-stream" not in response.headers.get("content-type", ""):
        # The server ignored "stream": true and sent the whole completion.
        _whole_completion(redactor.bytes(await read_within(response, server)), server, answer)
        if answer.parts:
            ctx.emit("token", answer.parts[-1])
        return
    stream = _Stream(ctx, answer, server)
    lines = Lines(server, lambda line: stream.line(redactor.text(line)))
    await consume_until(response.aiter_bytes(), lines.feed)
    lines.end()
    stream.end()


class _Stream:
    """Server-sent events: ``data:`` lines gathered until a blank line, then handled."""

    def __init__(self, ctx: NodeContext, answer: _Answer, server: str) -> None:
        self.ctx = ctx
        self.answer = answer
        self.server = server
        self.data: list[str] = []

    def line(self, line: str) -> bool:
        """Handle one line; True once the answer is complete."""
        if line == "":
            if self.data:
                _event(self.ctx, "\n".join(self.data), self.answer, self.server)
                self.data = []
            return self.answer.done
        if line.startswith("data:"):
            self.data.append(line[5:].removeprefix(" "))
        elif not line.startswith((":", "event:", "id:", "retry:")):
            raise NodeError(
                f"{self.server} sent a malformed stream: unexpected line {line[:100]!r}"
            )
        return False

    def end(self) -> None:
        if self.data and not self.answer.done:
            _event(self.ctx, "\n".join(self.data), self.answer, self.server)
        if not self.answer.done and self.answer.finish_reason is None:
            raise NodeError(
                f"{self.server} ended the stream before [DONE] or a finish_reason, after "
                f"{len(self.answer.parts)} tokens: the answer is cut short"
            )


def _event(ctx: NodeContext, data: str, answer: _Answer, server: str) -> None:
    if data == "[DONE]":
        answer.done = True
        return
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise NodeError(f"{server} sent a malformed stream: not JSON: {data[:100]!r}") from None
    if not isinstance(chunk, dict):
        raise NodeError(f"{server} sent a malformed stream: expected objects, got {data[:100]!r}")
    if "error" in chunk:
        raise NodeError(f"{server} reported an error mid-stream: {error_text(data.encode())}")
    usage = chunk.get("usage")
    if isinstance(usage, dict):  # the last chunk, with stream_options.include_usage
        answer.usage = usage
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise NodeError(f"{server} sent a malformed stream: no choices in {data[:100]!r}")
    if not choices:
        return  # usage-only chunks have no choices
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if not isinstance(delta, dict):
        raise NodeError(f"{server} sent a malformed stream: a choice without delta: {data[:100]!r}")
    content = delta.get("content")
    if isinstance(content, str) and content:
        answer.parts.append(content)
        ctx.emit("token", content)
    calls = delta.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise NodeError(f"{server} sent a malformed stream: tool_calls in {data[:100]!r}")
        for piece in calls:
            index = piece.get("index") if isinstance(piece, dict) else None
            _call_piece(answer, piece if isinstance(piece, dict) else None, index, server)
    reason = choice.get("finish_reason")
    if isinstance(reason, str):
        answer.finish_reason = reason


def _whole_completion(body: bytes, server: str, answer: _Answer) -> None:
    try:
        whole = orjson.loads(body)
        message = whole["choices"][0]["message"]
        content = message.get("content")
    except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError):
        raise NodeError(
            f"{server} answered neither an event stream nor a chat completion: "
            f"{error_text(body, 100)}"
        ) from None
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise NodeError(f"{server} answered malformed tool_calls: {error_text(body, 100)}")
        for index, call in enumerate(calls):
            _call_piece(answer, call if isinstance(call, dict) else None, index, server)
    elif not isinstance(content, str):
        raise NodeError(f"{server} answered a completion without text content")
    if isinstance(content, str) and content:
        answer.parts.append(content)
    usage = whole.get("usage")
    if isinstance(usage, dict):
        answer.usage = usage
    answer.finish_reason = whole["choices"][0].get("finish_reason")


def _call_piece(answer: _Answer, piece: dict[str, Any] | None, index: Any, server: str) -> None:
    """A streamed ``delta.tool_calls`` item (or a whole one): its pieces added to the call."""
    function = piece.get("function", {}) if piece is not None else None
    if not isinstance(index, int) or isinstance(index, bool) or not isinstance(function, dict):
        raise NodeError(f"{server} sent a malformed tool call: {error_text(orjson.dumps(piece))}")
    call = answer.calls.get(index)
    if call is None:
        if len(answer.calls) >= MAX_CALLS_PER_ROUND:
            raise NodeError(
                f"{server}: the model asked for more than {MAX_CALLS_PER_ROUND} tool calls at once"
            )
        call = answer.calls[index] = _Call(index)
    assert piece is not None
    if isinstance(piece.get("id"), str) and piece["id"]:
        call.id = piece["id"]
    name = function.get("name")
    if isinstance(name, str) and name != call.name:
        # The name comes whole in the first piece; a few servers send it in
        # pieces, a few repeat it in every piece.
        call.name += name
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        call.arguments.append(arguments)
    elif isinstance(arguments, dict):  # a few servers send an object, not its text
        call.arguments.append(orjson.dumps(arguments).decode())


@hookimpl
def flowqd_executors() -> list[Executor]:
    return [
        Executor(
            type="llm",
            params=LlmParams,
            run=run_llm,
            description="Ask an OpenAI-compatible chat server; stream tokens; return the text.",
            check=check_llm,
        )
    ]

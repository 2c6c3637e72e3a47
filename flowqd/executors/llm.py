"""``llm``: OpenAI-compatible chat completions, streamed token by token.

Works with any server speaking ``POST {base_url}/chat/completions`` with
``"stream": true`` and server-sent events (OpenAI, vLLM, llama.cpp server,
Ollama, LiteLLM...). Each content delta becomes one ``token`` event.
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
from flowqd.redaction import Redactor

_optional = attrs.validators.optional
_ge, _gt = attrs.validators.ge, attrs.validators.gt


@attrs.frozen
class Message:
    role: str
    content: str


@attrs.frozen
class LlmParams:
    base_url: str  # e.g. "http://127.0.0.1:8000/v1"
    model: str
    messages: list[Message] = attrs.Factory(list)  # sent before the prompt input
    system: str | None = None  # a system message sent first
    temperature: float | None = attrs.field(default=None, validator=_optional(_ge(0)))
    max_tokens: int | None = attrs.field(default=None, validator=_optional(_gt(0)))
    credential: str | None = None  # stored credential holding the API key
    timeout_s: float = attrs.field(default=120.0, validator=attrs.validators.gt(0))


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


class _Answer:
    """The text so far and how the stream ended."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.done = False  # [DONE] seen
        self.finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


async def run_llm(ctx: NodeContext) -> str:
    params: LlmParams = ctx.params
    messages = [{"role": "system", "content": params.system}] if params.system else []
    messages += [attrs.asdict(m) for m in params.messages]
    if "prompt" in ctx.inputs:
        messages.append({"role": "user", "content": _as_text(ctx.inputs["prompt"])})
    body: dict[str, Any] = {"model": params.model, "messages": messages, "stream": True}
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    headers = {"Accept": "text/event-stream"}
    redactor = Redactor()
    if params.credential is not None:
        key = await ctx.credential(params.credential)
        headers["Authorization"] = f"Bearer {key}"
        redactor.add(params.credential, key)
    server = f"LLM server {shown_url(params.base_url)}"
    answer = _Answer()
    with trio.move_on_after(params.timeout_s):
        try:
            async with open_client(params.timeout_s) as client:
                url = params.base_url.rstrip("/") + "/chat/completions"
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    await _read_answer(ctx, response, answer, server, redactor)
                    return answer.text
        except httpx.TimeoutException:
            pass
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise NodeError(f"{server}: request failed: {type(exc).__name__}: {exc}") from None
    raise NodeError(
        f"{server} did not finish within {params.timeout_s:g} s (params.timeout_s, model "
        f"{params.model!r}); {len(answer.parts)} tokens had arrived"
    )


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
        answer.parts.append(
            _whole_completion(redactor.bytes(await read_within(response, server)), server)
        )
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
    reason = choice.get("finish_reason")
    if isinstance(reason, str):
        answer.finish_reason = reason


def _whole_completion(body: bytes, server: str) -> str:
    try:
        content = orjson.loads(body)["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, LookupError, TypeError):
        raise NodeError(
            f"{server} answered neither an event stream nor a chat completion: "
            f"{error_text(body, 100)}"
        ) from None
    if not isinstance(content, str):
        raise NodeError(f"{server} answered a completion without text content")
    return content


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

"""``http``: one HTTP request with httpx; returns status, headers and JSON or text."""

from __future__ import annotations

from collections.abc import Iterator, Set
from typing import Any

import attrs
import httpx
import orjson
import trio

from flowqd import Executor, NodeContext, NodeError, hookimpl
from flowqd.executors._http import (
    check_url,
    open_client,
    read_some,
    read_within,
    shown_url,
)
from flowqd.redaction import Redactor

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
INPUTS = ("url", "json", "body")


@attrs.frozen
class HttpParams:
    url: str
    method: str = attrs.field(default="GET", validator=attrs.validators.in_(METHODS))
    headers: dict[str, str] = attrs.Factory(dict)
    json: Any = None  # sent as the JSON body when not null
    body: str | None = None  # sent as the body as it is
    timeout_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    allow_status: list[int] = attrs.Factory(list)  # non-2xx statuses that are not failures
    credential: str | None = None  # stored credential sent as "<auth_scheme> <value>"
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"


def check_http(params: HttpParams, inputs: Set[str]) -> Iterator[tuple[str, str]]:
    if "url" not in inputs:
        yield from check_url(params.url, "params.url")
    if params.json is not None and params.body is not None:
        yield "params", "give json or body, not both"
    if {"json", "body"} <= inputs:
        yield "inputs", "give a json or a body input, not both"
    for name in sorted(inputs - set(INPUTS)):
        yield f"inputs.{name}", f"http takes only the inputs {', '.join(INPUTS)}"


async def run_http(ctx: NodeContext) -> dict[str, Any]:
    params: HttpParams = ctx.params
    url = str(ctx.inputs.get("url", params.url))
    request: dict[str, Any] = {"headers": dict(params.headers)}
    if "json" in ctx.inputs:
        request["json"] = ctx.inputs["json"]
    elif "body" in ctx.inputs:
        request["content"] = str(ctx.inputs["body"])
    elif params.json is not None:
        request["json"] = params.json
    elif params.body is not None:
        request["content"] = params.body
    redactor = Redactor()
    if params.credential is not None:
        secret = await ctx.credential(params.credential)
        request["headers"][params.auth_header] = f"{params.auth_scheme} {secret}".strip()
        redactor.add(params.credential, secret)
    what = f"{params.method} {shown_url(url)}"
    answer: tuple[httpx.Response, bytes] | None = None
    with trio.move_on_after(params.timeout_s):
        try:
            async with (
                open_client(params.timeout_s) as client,
                client.stream(params.method, url, **request) as response,
            ):
                answer = response, await _read(response, what, params, redactor)
        except httpx.TimeoutException:
            pass
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise NodeError(f"{what} failed: {type(exc).__name__}: {exc}") from None
    if answer is None:
        raise NodeError(f"{what} did not answer within {params.timeout_s:g} s (params.timeout_s)")
    response, body = answer
    result: dict[str, Any] = {"status": response.status_code, "headers": dict(response.headers)}
    if "json" in response.headers.get("content-type", ""):
        try:
            result["json"] = orjson.loads(body)
            return result
        except orjson.JSONDecodeError:
            pass
    result["text"] = _text(response, body)
    return result


async def _read(
    response: httpx.Response, what: str, params: HttpParams, redactor: Redactor
) -> bytes:
    """The body of an answer that is not a failure (limits.max_response_bytes applies)."""
    status = response.status_code
    if not 200 <= status < 300 and status not in params.allow_status:
        start = redactor.text(_text(response, await read_some(response, 1200)))
        raise NodeError(
            f"{what} answered HTTP {status} {response.reason_phrase}: {start[:300]!r}; "
            "add the status to params.allow_status if it is expected"
        )
    return await read_within(response, what)


def _text(response: httpx.Response, body: bytes) -> str:
    return body.decode(response.encoding or "utf-8", "replace")


@hookimpl
def flowqd_executors() -> list[Executor]:
    return [
        Executor(
            type="http",
            params=HttpParams,
            run=run_http,
            description="Make one HTTP request; return its status, headers and JSON or text.",
            check=check_http,
        )
    ]

"""``POST /api/v1/prediction/{flow_id}`` answered in front of Quart's routing.

Predictions are most of a main's requests, and Quart's machinery per request
(request and context objects, URL matching, the hooks, a task reading the body)
cost about a fifth of the main's CPU per prediction (bench/http_api.py). This
path runs the route's own code (``predictions.predict``) between the same steps
the app's hooks and error handlers take (``authn``, ``http``, ``exchange``,
``access``, tracing), so both answer alike. The Quart route stays: OpenAPI and
the access marks read it, and it answers behind a root path. Every other
request goes to Quart unchanged.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import attrs
import trio
from quart import Response
from quart.utils import encode_headers
from quart.wrappers.response import DataBody
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout
from werkzeug.http import parse_cookie
from werkzeug.sansio.utils import get_content_length

from flowqd import tracing
from flowqd.api import access, predictions
from flowqd.api.authn import Authenticator
from flowqd.api.context import ApiContext
from flowqd.api.exchange import count, error_answer
from flowqd.api.http import parse_json, require_json_type
from flowqd.auth import ANONYMOUS, Principal

__all__ = ["serve_predictions"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTE = predictions.ROUTE
ENDPOINT = "predictions.prediction"
_PATH = re.compile(r"/api/v1/prediction/([^/]+)")  # ROUTE's, as werkzeug matches it


@attrs.define(eq=False, slots=False)
class _Request:
    """What the checks read of the request (``http.Incoming``), as Quart makes them."""

    method: str
    headers: Headers

    @functools.cached_property
    def cookies(self) -> dict[str, str]:
        return dict(parse_cookie(";".join(self.headers.getlist("Cookie"))))


def serve_predictions(app: QuartTrio, ctx: ApiContext, authn: Authenticator) -> Asgi:
    """``app``'s ASGI callable with the prediction route answered before it."""
    lean = _Lean(ctx, authn, ctx.config.log.access, app.config["RESPONSE_TIMEOUT"])
    quart = cast(Asgi, app.asgi_app)

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _PATH.fullmatch(scope["path"])
            if match is not None and not scope.get("root_path"):
                await lean.answer(scope, receive, send, match[1])
                return
        await quart(scope, receive, send)

    return asgi


@attrs.frozen
class _Lean:
    ctx: ApiContext
    authn: Authenticator
    log_access: bool
    response_timeout_s: float | None  # Quart's, for answers that set none

    async def answer(self, scope: Scope, receive: Receive, send: Send, flow_id: str) -> None:
        started = time.perf_counter()
        headers = Headers([(n.decode("latin1"), v.decode("latin1")) for n, v in scope["headers"]])
        if scope["http_version"] < "1.1":
            headers.setdefault("Host", "")  # as Quart does (the Host check then refuses)
        server = self.ctx.config.server
        who: Principal = ANONYMOUS
        body_read = False
        # As quart-trio does: the client leaving cancels the answer.
        async with trio.open_nursery() as nursery:
            try:
                who = self.authn.principal(_Request("POST", headers), ENDPOINT)
                require_json_type(headers)
                data = await _read_body(
                    receive, headers, server.max_body_bytes, server.body_timeout_s
                )
                if data is None:
                    nursery.cancel_scope.cancel()
                    return
                body_read = True
                nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope)
                body = parse_json(data, server.max_json_depth)
                response = await predictions.predict(self.ctx, flow_id, body, who, scope)
            except Exception as exc:
                response = error_answer(exc, "POST", scope["path"], server)
            if tracing.current is not None:
                tracing.name_route(scope, "POST", ROUTE)
            if self.log_access:
                client = scope.get("client")
                remote = client[0] if client else "<local>"
                response = access.record(response, "POST", ROUTE, started, who, remote)
            count(self.ctx.metrics, response, "POST", ROUTE, started, body_read, headers)
            await _send_response(send, response, self.response_timeout_s)
            nursery.cancel_scope.cancel()


async def _read_body(
    receive: Receive, headers: Headers, limit: int, timeout_s: float
) -> bytes | None:
    """The whole body (None: the client left first); 413 past ``limit`` bytes, 408
    when it does not arrive within server.body_timeout_s (as Quart's request does)."""
    length = get_content_length(headers.get("Content-Length"), headers.get("Transfer-Encoding"))
    if length is not None and length > limit:
        raise RequestEntityTooLarge()
    data = bytearray()
    with trio.move_on_after(timeout_s) as scope:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            data += message.get("body", b"")
            if len(data) > limit:
                raise RequestEntityTooLarge()
            if not message.get("more_body", False):
                return bytes(data)
    assert scope.cancelled_caught
    raise RequestTimeout()


async def _watch_disconnect(receive: Receive, answer: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    answer.cancel()


async def _send_response(send: Send, response: Response, default_s: float | None) -> None:
    timeout = default_s if response.timeout is Ellipsis else response.timeout
    with trio.move_on_after(math.inf if timeout is None else timeout):
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": encode_headers(response.headers),
            }
        )
        body = response.response
        if isinstance(body, DataBody):
            # Whole: one message, where Quart sends the body and then its end.
            await send({"type": "http.response.body", "body": body.data, "more_body": False})
            return
        async with body as chunks:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

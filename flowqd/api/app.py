"""The main role's HTTP API as a quart-trio app.

Routes are module-level handlers in blueprints (``service``, ``predictions``,
``jobs``, ``chatmessages``, ``manage``, ``dashboard``); they reach what they
share through ``context()``. This module wires them with authentication (``authn``),
errors as JSON, metrics and the access log (``access``, log.access).
"""

from __future__ import annotations

import logging
import time
from typing import cast

from quart import Request, Response, current_app, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from flowqd import tracing
from flowqd.api import (
    access,
    chatmessages,
    dashboard,
    health,
    jobs,
    manage,
    predictions,
    schedules,
    service,
)
from flowqd.api.authn import Authenticator
from flowqd.api.context import ApiContext, context
from flowqd.api.guard import Guard
from flowqd.api.http import ApiError, error_response, json_response, unavailable
from flowqd.errors import BrokerUnavailable

__all__ = ["ApiContext", "create_app", "error_response", "json_response"]

log = logging.getLogger("flowqd.api")

BLUEPRINTS = (
    service.blueprint,
    health.blueprint,
    predictions.blueprint,
    jobs.blueprint,
    chatmessages.blueprint,
    manage.blueprint,
    schedules.blueprint,
    dashboard.blueprint,
)


def create_app(ctx: ApiContext) -> QuartTrio:
    """The app serving ``ctx``'s queue and stores."""
    app = QuartTrio("flowqd")
    server = ctx.config.server
    app.config["MAX_CONTENT_LENGTH"] = server.max_body_bytes
    app.config["BODY_TIMEOUT"] = server.body_timeout_s
    app.config["MAX_JSON_DEPTH"] = server.max_json_depth
    ctx.install(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    # The dashboard's sign-in cookie is one more way to send a key; with the
    # dashboard off nothing signs browsers in and no cookie is honoured.
    sources = (dashboard.cookie_token,) if ctx.config.dashboard.enabled else ()
    authn = Authenticator.for_app(app, ctx.keys, Guard.from_config(server), sources)
    app.before_serving(_remember_nursery)
    app.after_serving(_forget_nursery)
    app.before_request(_start_clock)
    app.before_request(authn.admit)
    app.after_request(_count)
    if ctx.config.log.access:
        access.install(app)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(BrokerUnavailable, _broker_down)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    if tracing.current is not None:
        # Nothing at all per request while tracing is off.
        app.asgi_app = tracing.asgi_middleware(app.asgi_app)  # type: ignore[method-assign]
        app.after_request(_name_span)
    return app


async def _remember_nursery() -> None:
    context().nursery = cast(QuartTrio, current_app).nursery


async def _forget_nursery() -> None:
    context().nursery = None


async def _start_clock() -> None:
    g.started = time.perf_counter()


def _carries_body(req: Request) -> bool:
    return bool(req.content_length) or "chunked" in req.headers.get("Transfer-Encoding", "")


async def _count(response: Response) -> Response:
    metrics = context().metrics
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.requests.inc(route=route, method=request.method, status=str(response.status_code))
    started = getattr(g, "started", None)
    if started is not None:
        metrics.latency.observe(time.perf_counter() - started, route=route)
    if not getattr(g, "body_read", False) and _carries_body(request):
        # Answered without reading the body (401, 403, 404...): the unread
        # bytes make the connection unusable, and a keep-alive client's next
        # request on it could wait forever. Close it after this answer.
        response.headers["Connection"] = "close"
    return response


async def _name_span(response: Response) -> Response:
    if request.url_rule is not None:
        tracing.name_route(request.scope, request.method, request.url_rule.rule)
    return response


async def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.headers, **exc.extra)


async def _broker_down(exc: BrokerUnavailable) -> Response:
    error = unavailable(str(exc), explained=True)
    return error_response(error.status, error.message, error.headers)


async def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    server = context().config.server
    if status == 404:
        message = (
            f"no route {request.method} {request.path}: GET /api/v1/openapi.json lists the routes"
        )
    elif status == 405 and isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        message = f"{request.method} is not allowed on {request.path}; use {allowed}"
    elif status == 413:
        # The rest of the body is never read, so the connection cannot
        # carry another request: say so, or a keep-alive client sends its
        # next request into a socket the server is about to close.
        message = (
            f"the request body is larger than server.max_body_bytes "
            f"({server.max_body_bytes} bytes): send less"
        )
        return error_response(status, message, {"Connection": "close"})
    elif status == 408:
        # Part of the body never came: the connection cannot carry another request.
        message = (
            f"the request body did not arrive within server.body_timeout_s "
            f"({server.body_timeout_s:g}s): send the whole body at once"
        )
        return error_response(status, message, {"Connection": "close"})
    else:
        message = exc.description or exc.name
    return error_response(status, message)


async def _unexpected(exc: Exception) -> Response:
    # A bug, never the client's input: log it, answer without details.
    log.exception("%s %s failed", request.method, request.path, exc_info=exc)
    return error_response(
        500, "internal error in flowqd (a bug, not your request): the server log has the details"
    )

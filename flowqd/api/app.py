"""The main role's HTTP API as a quart-trio app.

Routes live in ``predictions``, ``jobs``, ``manage`` and ``dashboard``; this module wires
them with authentication, errors as JSON, metrics and the OpenAPI document.
"""

from __future__ import annotations

import contextlib
import logging
import time

import attrs
import trio
from quart import Request, Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from flowqd.api import dashboard, jobs, manage, openapi, predictions
from flowqd.api.context import ApiContext
from flowqd.api.guard import Guard
from flowqd.api.http import ApiError, error_response, json_response, unavailable
from flowqd.api.metrics import ApiMetrics
from flowqd.auth import ANONYMOUS, KeyRing
from flowqd.config import Config
from flowqd.credentials import CredentialStore
from flowqd.errors import BrokerUnavailable
from flowqd.flows import FlowStore
from flowqd.metrics import CONTENT_TYPE, Registry
from flowqd.queue.base import Broker

__all__ = ["ApiState", "create_app", "error_response", "json_response"]

log = logging.getLogger("flowqd.api")

# Routes anyone may call: liveness, scraping, the API description, and the
# question the Flowise SDKs ask without credentials before every prediction.
OPEN_ENDPOINTS = frozenset({"ping", "metrics", "openapi_json", "chatflow_streaming"})


@attrs.define(eq=False)
class ApiState:
    config: Config
    broker: Broker
    flows: FlowStore
    credentials: CredentialStore
    registry: Registry
    # Set when the daemon begins to stop: event streams end, waiters answer.
    shutdown: trio.Event = attrs.Factory(trio.Event)
    # None: built from config.auth (reading auth.keys_file).
    keys: KeyRing | None = None


def _carries_body(req: Request) -> bool:
    return bool(req.content_length) or "chunked" in req.headers.get("Transfer-Encoding", "")


def create_app(state: ApiState) -> QuartTrio:
    """The app; raises ConfigError when the auth settings are unusable (see KeyRing)."""
    keys = state.keys if state.keys is not None else KeyRing.from_config(state.config)
    ctx = ApiContext(state, keys, ApiMetrics(state.registry))
    cookies = state.config.dashboard.enabled
    app = QuartTrio("flowqd")
    server = state.config.server
    guard = Guard.from_config(server)
    app.config["MAX_CONTENT_LENGTH"] = server.max_body_bytes
    app.config["BODY_TIMEOUT"] = server.body_timeout_s
    app.config["MAX_JSON_DEPTH"] = server.max_json_depth

    @app.before_serving
    async def remember_nursery() -> None:
        ctx.nursery = app.nursery

    @app.after_serving
    async def forget_nursery() -> None:
        ctx.nursery = None

    @app.before_request
    async def authenticate() -> None:
        g.started = time.perf_counter()
        g.principal = ANONYMOUS
        # Host and Origin first: every route, open ones and unknown paths included.
        guard.check(request)
        if request.endpoint is None or request.endpoint in OPEN_ENDPOINTS:
            return
        if request.endpoint in dashboard.SELF_AUTHENTICATED:
            # The dashboard's page and sign-in routes decide for themselves.
            with contextlib.suppress(ApiError):
                g.principal = dashboard.authenticate(keys, accept_cookie=cookies) or ANONYMOUS
            return
        # The bearer header, or the dashboard's cookie on same-origin requests.
        who = dashboard.authenticate(keys, accept_cookie=cookies)
        if who is None:
            raise ApiError(401, "missing or unknown API key: send Authorization: Bearer <key> "
                                "(an administrator creates keys with `flowqd keys add NAME`)",
                           headers={"WWW-Authenticate": "Bearer"})
        g.principal = who

    @app.after_request
    async def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        ctx.metrics.requests.inc(route=route, method=request.method,
                                 status=str(response.status_code))
        started = getattr(g, "started", None)
        if started is not None:
            ctx.metrics.latency.observe(time.perf_counter() - started, route=route)
        if not getattr(g, "body_read", False) and _carries_body(request):
            # Answered without reading the body (401, 403, 404...): the unread
            # bytes make the connection unusable, and a keep-alive client's next
            # request on it could wait forever. Close it after this answer.
            response.headers["Connection"] = "close"
        return response

    @app.get("/api/v1/ping")
    async def ping() -> Response:
        return Response("pong", content_type="text/plain")

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            with trio.fail_after(state.config.server.broker_timeout_s):
                counts = await state.broker.counts()
                stats = await state.broker.statistics()
        except (BrokerUnavailable, trio.TooSlowError):
            ctx.metrics.broker_up.set(0)
        else:
            ctx.metrics.broker_up.set(1)
            for status, n in counts.items():
                ctx.metrics.queue_depth.set(n, state=status.value)
            for name, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    ctx.metrics.broker.set(value, name=name)
        return Response(state.registry.render(), content_type=CONTENT_TYPE)

    @app.get("/api/v1/openapi.json")
    async def openapi_json() -> Response:
        return json_response(openapi.spec())

    predictions.register(app, ctx)
    jobs.register(app, ctx)
    manage.register(app, ctx)
    dashboard.register(app, ctx)

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers, **exc.extra)

    @app.errorhandler(BrokerUnavailable)
    async def broker_down(exc: BrokerUnavailable) -> Response:
        error = unavailable(str(exc))
        return error_response(error.status, error.message, error.headers)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404:
            message = (f"no route {request.method} {request.path}: "
                       "GET /api/v1/openapi.json lists the routes")
        elif status == 405 and isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(sorted(exc.valid_methods or ()))
            message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        elif status == 413:
            # The rest of the body is never read, so the connection cannot
            # carry another request: say so, or a keep-alive client sends its
            # next request into a socket the server is about to close.
            message = (f"the request body is larger than server.max_body_bytes "
                       f"({server.max_body_bytes} bytes): send less")
            return error_response(status, message, {"Connection": "close"})
        elif status == 408:
            # Part of the body never came: the connection cannot carry another request.
            message = (f"the request body did not arrive within server.body_timeout_s "
                       f"({server.body_timeout_s:g}s): send the whole body at once")
            return error_response(status, message, {"Connection": "close"})
        else:
            message = exc.description or exc.name
        return error_response(status, message)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        # A bug, never the client's input: log it, answer without details.
        log.exception("%s %s failed", request.method, request.path, exc_info=exc)
        return error_response(500, "internal error in flowqd (a bug, not your request): "
                                   "the server log has the details")

    return app

"""The main role's HTTP API as a quart-trio app.

Routes are module-level handlers in blueprints (``service``, ``predictions``,
``jobs``, ``chatmessages``, ``manage``, ``dashboard``); they reach what they
share through ``context()``. This module wires them with authentication (``authn``),
errors as JSON, metrics and the access log (``access``, log.access); ``lean``
answers predictions before Quart's routing, with the same steps.
"""

from __future__ import annotations

import time
from typing import Any, cast

from quart import Response, current_app, g, request
from quart_trio import QuartTrio

from flowqd import tracing
from flowqd.api import (
    access,
    chatmessages,
    dashboard,
    health,
    jobs,
    lean,
    manage,
    predictions,
    schedules,
    service,
)
from flowqd.api.authn import Authenticator
from flowqd.api.context import ApiContext, context
from flowqd.api.exchange import count, error_answer
from flowqd.api.guard import Guard
from flowqd.api.http import error_response, json_response

__all__ = ["ApiContext", "create_app", "error_response", "json_response"]

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
    # HTTP errors (404, 413...) too: Quart looks a handler up along the exception's classes.
    app.register_error_handler(Exception, _error)
    app.asgi_app = cast(Any, lean.serve_predictions(app, ctx, authn))  # type: ignore[method-assign]
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


async def _count(response: Response) -> Response:
    return count(
        context().metrics,
        response,
        request.method,
        request.url_rule.rule if request.url_rule is not None else "unmatched",
        getattr(g, "started", None),
        getattr(g, "body_read", False),
        request.headers,
    )


async def _name_span(response: Response) -> Response:
    if request.url_rule is not None:
        tracing.name_route(request.scope, request.method, request.url_rule.rule)
    return response


async def _error(exc: Exception) -> Response:
    return error_answer(exc, request.method, request.path, context().config.server)

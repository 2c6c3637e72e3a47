"""Routes about the service itself, open to anyone: liveness, metrics, the API description."""

from __future__ import annotations

import trio
from quart import Blueprint, Response

from flowqd.api import openapi
from flowqd.api.authn import open_route
from flowqd.api.context import context
from flowqd.api.http import json_response
from flowqd.errors import BrokerUnavailable
from flowqd.metrics import CONTENT_TYPE

__all__ = ["blueprint"]

blueprint = Blueprint("service", __name__)


@blueprint.get("/api/v1/ping")
@open_route
async def ping() -> Response:
    return Response("pong", content_type="text/plain")


@blueprint.get("/metrics")
@open_route
async def metrics() -> Response:
    ctx = context()
    try:
        with trio.fail_after(ctx.config.server.broker_timeout_s):
            counts = await ctx.control.counts()
            stats = await ctx.control.statistics()
    except (BrokerUnavailable, trio.TooSlowError):
        ctx.metrics.broker_up.set(0)
    else:
        ctx.metrics.broker_up.set(1)
        for status, n in counts.items():
            ctx.metrics.queue_depth.set(n, state=status.value)
        for name, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                ctx.metrics.broker.set(value, name=name)
    return Response(ctx.registry.render(), content_type=CONTENT_TYPE)


@blueprint.get("/api/v1/openapi.json")
@open_route
async def openapi_json() -> Response:
    return json_response(openapi.spec())

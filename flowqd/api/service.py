"""Routes about the service itself, open to anyone: liveness, metrics, the API description."""

from __future__ import annotations

from quart import Blueprint, Response

from flowqd.api import openapi
from flowqd.api.authn import open_route
from flowqd.api.context import context
from flowqd.api.http import json_response
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
    queues = {name: roles.control for name, roles in ctx.queues.items()}
    await ctx.metrics.refresh(queues, ctx.config.server.broker_timeout_s)
    return Response(ctx.metrics.render(), content_type=CONTENT_TYPE)


@blueprint.get("/api/v1/openapi.json")
@open_route
async def openapi_json() -> Response:
    return json_response(openapi.spec())

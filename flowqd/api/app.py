"""The main role's HTTP API as a quart-trio app."""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from flowqd.config import Config
from flowqd.credentials import CredentialStore
from flowqd.flows import FlowStore
from flowqd.metrics import CONTENT_TYPE, Registry
from flowqd.queue.base import Broker


@attrs.define(eq=False)
class ApiState:
    config: Config
    broker: Broker
    flows: FlowStore
    credentials: CredentialStore
    registry: Registry


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers,
                    content_type="application/json")


def error_response(status: int, message: str, **extra: Any) -> Response:
    return json_response({"statusCode": status, "success": False, "message": message, **extra},
                         status)


def create_app(state: ApiState) -> QuartTrio:
    app = QuartTrio("flowqd")
    app.config["MAX_CONTENT_LENGTH"] = None

    @app.get("/api/v1/ping")
    async def ping() -> Response:
        return Response("pong", content_type="text/plain")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.registry.render(), content_type=CONTENT_TYPE)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return error_response(status, exc.description or exc.name)

    return app

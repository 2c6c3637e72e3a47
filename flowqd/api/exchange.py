"""What every answer goes through, served by Quart or by ``lean``: errors as
JSON, the request metrics, and whether the connection can carry another request."""

from __future__ import annotations

import logging
import time

from quart import Response
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from flowqd.api.http import ApiError, carries_body, error_response, unavailable
from flowqd.api.metrics import ApiMetrics
from flowqd.config import ServerConfig
from flowqd.errors import BrokerUnavailable

__all__ = ["count", "error_answer"]

log = logging.getLogger("flowqd.api")


def count(
    metrics: ApiMetrics,
    response: Response,
    method: str,
    route: str,
    started: float | None,
    body_read: bool,
    headers: Headers,
) -> Response:
    metrics.requests.inc(route=route, method=method, status=str(response.status_code))
    if started is not None:
        metrics.latency.observe(time.perf_counter() - started, route=route)
    if not body_read and carries_body(headers):
        # Answered without reading the body (401, 403, 404...): the unread
        # bytes make the connection unusable, and a keep-alive client's next
        # request on it could wait forever. Close it after this answer.
        response.headers["Connection"] = "close"
    return response


def error_answer(exc: Exception, method: str, path: str, server: ServerConfig) -> Response:
    """The JSON answer to ``exc``, raised while answering ``method path``."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.headers, **exc.extra)
    if isinstance(exc, BrokerUnavailable):
        error = unavailable(str(exc), explained=True)
        return error_response(error.status, error.message, error.headers)
    if isinstance(exc, HTTPException):
        return _http_error(exc, method, path, server)
    # A bug, never the client's input: log it, answer without details.
    log.exception("%s %s failed", method, path, exc_info=exc)
    return error_response(
        500, "internal error in flowqd (a bug, not your request): the server log has the details"
    )


def _http_error(exc: HTTPException, method: str, path: str, server: ServerConfig) -> Response:
    status = exc.code or 500
    if status == 404:
        message = f"no route {method} {path}: GET /api/v1/openapi.json lists the routes"
    elif status == 405 and isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        message = f"{method} is not allowed on {path}; use {allowed}"
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

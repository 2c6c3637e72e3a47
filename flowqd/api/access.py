"""The main's access log: one ``flowqd.access`` info line per HTTP request answered.

The line says ``METHOD ROUTE STATUS`` and carries the fields ``method``,
``route`` (the rule that matched, ``/api/v1/prediction/<flow_id>``, never the
raw path, whose ids and query string are the caller's), ``status``,
``duration_ms``, ``key`` (the API key's name; absent for a caller without
one) and ``remote`` (the client's address). Nothing of the request's headers,
cookies or query string is written, so no credential reaches the log.

A streamed answer (an event stream) is written when its body ends, however
it ends, with the whole duration; every other answer when its response is made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import attrs
from quart import Quart, Response, g, request
from quart.wrappers.response import IterableBody, ResponseBody

from flowqd.auth import Principal

__all__ = ["UNMATCHED", "install", "record"]

log = logging.getLogger("flowqd.access")

# The route of a request no rule matched (a 404, or a 405 before the method check).
UNMATCHED = "unmatched"


def install(app: Quart) -> None:
    """Log ``app``'s requests (log.access); register after the hook that starts
    the clock (``g.started``) and the one that sets ``g.principal``."""
    app.after_request(_access)


async def _access(response: Response) -> Response:
    rule = request.url_rule
    return record(
        response,
        request.method,
        rule.rule if rule is not None else UNMATCHED,
        getattr(g, "started", None),
        getattr(g, "principal", None),
        request.remote_addr,
    )


def record(
    response: Response,
    method: str,
    route: str,
    started: float | None,
    who: Principal | None,
    remote: str | None,
) -> Response:
    """Log ``response``'s line now, or at the end of its body for a stream."""
    # One cached level check: log.level = warning costs nothing more per request.
    if not log.isEnabledFor(logging.INFO):
        return response
    line = _Line(
        method,
        route,
        response.status_code,
        started,
        who.name if who is not None else None,
        remote,
    )
    body = response.response
    if isinstance(body, IterableBody):
        # Streamed: the body is sent after this hook, outside the request's
        # context; the line waits for its end.
        response.response = _Streamed(body, line.write)
    else:
        line.write()
    return response


@attrs.frozen
class _Line:
    method: str
    route: str
    status: int
    started: float | None  # perf_counter() when the request came, if it got that far
    key: str | None
    remote: str | None

    def write(self) -> None:
        fields: dict[str, Any] = {"method": self.method, "route": self.route, "status": self.status}
        if self.started is not None:
            fields["duration_ms"] = round((time.perf_counter() - self.started) * 1000, 3)
        if self.key is not None:
            fields["key"] = self.key
        if self.remote:
            fields["remote"] = self.remote
        log.info("%s %s %d", self.method, self.route, self.status, extra=fields)


class _Streamed(ResponseBody):
    """A streamed body that calls ``ended`` once it is done with: sent whole,
    cut by the client leaving, or failed."""

    def __init__(self, body: ResponseBody, ended: Callable[[], None]) -> None:
        self._body = body
        self._ended = ended

    async def __aenter__(self) -> Any:
        return await self._body.__aenter__()

    async def __aexit__(self, exc_type: type, exc_value: BaseException, tb: TracebackType) -> None:
        try:
            await self._body.__aexit__(exc_type, exc_value, tb)
        finally:
            self._ended()

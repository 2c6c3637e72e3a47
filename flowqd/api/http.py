"""Request and response helpers: JSON bodies, errors people can act on, broker deadlines.

Every error body has the keys Flowise clients read (``statusCode``,
``success``, ``message``) plus whatever helps (``problems``, ``jobId``).
Messages never quote request values: a credential sent with the wrong type
must not come back in an answer or a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, cast

import orjson
import trio
from quart import Request, Response, current_app, g
from werkzeug.datastructures import Headers
from werkzeug.sansio.utils import get_content_length

from flowqd.errors import BrokerUnavailable


class Incoming(Protocol):
    """What the checks before a handler read of a request: Quart's, or ``lean``'s."""

    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def cookies(self) -> Mapping[str, str]: ...


class ApiError(Exception):
    """An answer other than success; the app's error handler renders it as JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json",
    )


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> Response:
    return json_response(
        {"statusCode": status, "success": False, "message": message, **extra}, status, headers
    )


def unavailable(detail: str, *, explained: bool = False) -> ApiError:
    """503 for a broker that did not answer; ``explained``: ``detail`` already says
    what to check (a BrokerUnavailable's message names the server and the setting)."""
    advice = (
        "try again"
        if explained
        else "the broker (Redis) is unreachable or too slow; check that Redis runs and "
        "answers (redis.url, or redis.sentinels or redis.nodes) and try again"
    )
    return ApiError(503, f"{detail}; {advice}", headers={"Retry-After": "1"})


class BrokerDeadline:
    """Bound one exchange with the broker; past the deadline the client gets 503, not a hang.

    A class, not a generator: every broker call of a request enters one.
    """

    __slots__ = ("_scope", "_seconds", "_what")

    def __init__(self, seconds: float, what: str) -> None:
        self._seconds = seconds
        self._what = what
        self._scope = trio.CancelScope(relative_deadline=seconds)

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The scope swallows only its own cancellation, which becomes the 503 here.
        self._scope.__exit__(exc_type, exc, tb)
        if self._scope.cancelled_caught or isinstance(exc, trio.TooSlowError):
            raise unavailable(f"{self._what}: no answer within {self._seconds:g}s") from None
        if isinstance(exc, BrokerUnavailable):
            raise unavailable(f"{self._what}: {exc}", explained=True) from None


async def read_json(request: Request) -> Any:
    """The request body as JSON; 400 naming the position when it is malformed.

    The body must say it is JSON (Content-Type ``application/json`` or
    ``*/*+json``, else 415): a form or ``text/plain`` body is what any web page
    may send cross-site without asking. The size limit is the app's
    ``MAX_CONTENT_LENGTH`` (``server.max_body_bytes``): a larger body raises
    RequestEntityTooLarge, answered with 413. Nesting deeper than
    ``MAX_JSON_DEPTH`` (``server.max_json_depth``) is 400: orjson reads
    documents it cannot write back (from 255 levels).
    """
    require_json_type(request.headers)
    data = cast(bytes, await request.get_data(cache=False, as_text=False))
    g.body_read = True  # the connection may carry the next request (see app.count)
    return parse_json(data, current_app.config["MAX_JSON_DEPTH"])


def parse_json(data: bytes, limit: int) -> Any:
    """``read_json``'s reading of a body already received, ``limit`` levels deep at most."""
    if not data.strip():
        raise ApiError(
            400, "the request body is empty: send a JSON document (Content-Type: application/json)"
        )
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in exc.msg:
            raise too_deep(limit) from None
        raise ApiError(
            400,
            f"malformed JSON at line {exc.lineno}, column {exc.colno} (byte {exc.pos}): "
            f"{exc.msg}; fix the request body",
        ) from None
    # Brackets (counted in C, strings included) bound the depth: most bodies stop here.
    if data.count(b"[") + data.count(b"{") > limit and json_depth(value) > limit:
        raise too_deep(limit)
    return value


def carries_body(headers: Headers) -> bool:
    chunked = headers.get("Transfer-Encoding", "")
    return bool(get_content_length(headers.get("Content-Length"), chunked)) or "chunked" in chunked


def require_json_type(headers: Headers) -> None:
    """415 for a body not sent as JSON (see ``read_json``)."""
    media = (headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    if not carries_body(headers):
        return  # no body: read_json says so
    what = f"Content-Type: {media[:100]}" if media else "no Content-Type"
    raise ApiError(
        415,
        f"the request body must be JSON sent with Content-Type: "
        f"application/json; this request sent {what} (with curl: "
        "-H 'Content-Type: application/json')",
    )


def too_deep(limit: int) -> ApiError:
    return ApiError(
        400,
        f"the JSON body is nested more than {limit} levels deep, the limit "
        "server.max_json_depth: send a flatter document",
    )


def json_depth(value: Any) -> int:
    """Levels of nested arrays and objects in ``value`` (a scalar: 0)."""
    depth = 0
    level = [value] if isinstance(value, (dict, list)) else []
    while level:
        depth += 1
        nested = []
        for container in level:
            for item in container.values() if isinstance(container, dict) else container:
                if isinstance(item, (dict, list)):
                    nested.append(item)
        level = nested
    return depth


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Problems:
    """Every problem of a request body, each with its JSON path, reported in one 422."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def expect(self, value: Any, kinds: tuple[type, ...], path: str, wanted: str) -> bool:
        """True when ``value`` is one of ``kinds`` (bools are not numbers); else a problem."""
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            self.add(path, f"expected {wanted}, got {type_name(value)}")
        return ok

    def raise_if_any(self, what: str = "invalid request body") -> None:
        if self.items:
            summary = "; ".join(f"{path}: {message}" for path, message in self.items[:5])
            more = f" (and {len(self.items) - 5} more)" if len(self.items) > 5 else ""
            raise ApiError(
                422,
                f"{what}: {summary}{more}",
                problems=[{"path": p, "message": m} for p, m in self.items],
            )


def require_object(body: Any, what: str = "the request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(
            422,
            f"{what} must be a JSON object, got {type_name(body)}",
            problems=[{"path": "$", "message": f"expected an object, got {type_name(body)}"}],
        )
    return body

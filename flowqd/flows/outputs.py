"""What a job writes must be JSON and of bounded size (credentials: flowqd/redaction.py).

The runner encodes each node output and each event once, here, to check it;
the bytes then travel to the broker as ``orjson.Fragment`` instead of being
encoded again.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from flowqd.errors import NodeError
from flowqd.redaction import MAX_JSON_DEPTH

JSON_KINDS = "dict, list, str, number, bool, null"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def not_json(value: Any, exc: Exception) -> str:
    """Why ``value`` did not encode, as ``"set at $.items"``; ``exc`` is orjson's error.

    Only called after an encoding failed, so walking the value costs nothing
    on the way every job takes.
    """
    return _find(value, "$", 0) or str(exc)


def _find(value: Any, path: str, depth: int) -> str | None:
    if depth > MAX_JSON_DEPTH:
        return f"nesting deeper than {MAX_JSON_DEPTH} levels at {path}"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a dict key of type {type(key).__name__} ({key!r:.40}) at {path}"
            found = _find(item, _child(path, key), depth + 1)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            found = _find(item, f"{path}[{n}]", depth + 1)
            if found:
                return found
        return None
    try:
        orjson.dumps(value)
    except TypeError:
        return f"{_kind(value)} at {path}"
    return None


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "str with an unpaired surrogate"
    if isinstance(value, int):
        return "int beyond 64 bits"
    return type(value).__name__


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if _NAME.fullmatch(key) else f"{path}[{orjson.dumps(key).decode()}]"


def json_problem(value: Any) -> str | None:
    """None if ``value`` encodes as JSON, else where and why it does not."""
    try:
        orjson.dumps(value)
    except TypeError as exc:
        return not_json(value, exc)
    return None


def encode_event(name: str, data: Any, limit: int) -> bytes:
    """``data`` of an event an executor emits, as JSON; NodeError if it is not JSON or too large."""
    try:
        encoded = orjson.dumps(data)
    except TypeError as exc:
        raise NodeError(
            f"emitted a {name!r} event whose data is not JSON: {not_json(data, exc)}; "
            f"emit JSON-compatible data ({JSON_KINDS})"
        ) from None
    if len(encoded) > limit:
        raise NodeError(
            f"emitted a {name!r} event of {len(encoded):,} bytes of JSON, over "
            f"limits.max_event_bytes ({limit}); emit smaller events, or raise the limit"
        )
    return encoded

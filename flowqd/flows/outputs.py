"""What a job writes must be JSON, of bounded size, and free of the credentials it used.

The runner encodes each node output and each event once, here, to check it;
the bytes then travel to the broker as ``orjson.Fragment`` instead of being
encoded again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from flowqd.errors import NodeError
from flowqd.executors.base import redaction_mark

JSON_KINDS = "dict, list, str, number, bool, null"
# orjson refuses deeper documents ("Recursion limit reached").
_MAX_DEPTH = 254
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def not_json(value: Any, exc: Exception) -> str:
    """Why ``value`` did not encode, as ``"set at $.items"``; ``exc`` is orjson's error.

    Only called after an encoding failed, so walking the value costs nothing
    on the way every job takes.
    """
    return _find(value, "$", 0) or str(exc)


def _find(value: Any, path: str, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return f"nesting deeper than {_MAX_DEPTH} levels at {path}"
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


class Redactor:
    """Replaces the credential values a job opened wherever the job writes text.

    Besides each value as it is, its escaped forms (``repr``, JSON) are
    replaced, since an error message may quote a response with ``!r``.
    """

    def __init__(self) -> None:
        self._marks: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        if not value:
            return
        mark = redaction_mark(name)
        for form in (value, repr(value)[1:-1], orjson.dumps(value).decode()[1:-1]):
            self._marks.setdefault(form, mark)
        # Longest first: a value must not be half-replaced by a shorter one.
        self._marks = dict(sorted(self._marks.items(), key=lambda kv: -len(kv[0])))

    def text(self, text: str) -> str:
        for secret, mark in self._marks.items():
            if secret in text:
                text = text.replace(secret, mark)
        return text

    def value(self, value: Any, depth: int = 0) -> Any:
        """``value`` with every string (keys too) redacted; other values as they are."""
        if isinstance(value, str):
            return self.text(value)
        if depth > _MAX_DEPTH:  # not JSON anyway (a cycle, say): encoding refuses it
            return value
        if isinstance(value, Mapping):
            return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(item, depth + 1) for item in value]
        return value

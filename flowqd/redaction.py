"""Credential values out of what a job writes.

The runner redacts whole values from everything a job writes. Executors that
quote an upstream's answer in an error cut it first (300 characters, say);
they redact before cutting, because a cut value is no longer one the runner
can find ("Incorrect API key provided: sk-..." ending inside the key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# orjson refuses deeper documents ("Recursion limit reached").
MAX_JSON_DEPTH = 254


def redaction_mark(credential: str) -> str:
    """What a job writes where the value of ``credential`` was.

    No quotes: messages that quote an upstream's answer with ``repr()`` would
    escape them.
    """
    return f"[credential {credential} redacted]"


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

    def bytes(self, data: bytes) -> bytes:
        """``data`` as an upstream sent it, before a message quotes a cut of it."""
        for secret, mark in self._marks.items():
            data = data.replace(secret.encode(), mark.encode())
        return data

    def value(self, value: Any, depth: int = 0) -> Any:
        """``value`` with every string (keys too) redacted; other values as they are."""
        if isinstance(value, str):
            return self.text(value)
        if depth > MAX_JSON_DEPTH:  # not JSON anyway (a cycle, say): encoding refuses it
            return value
        if isinstance(value, Mapping):
            return {self.value(k, depth + 1): self.value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(item, depth + 1) for item in value]
        return value

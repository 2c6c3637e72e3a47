"""Strict parsing of flowqd's standard SSE streams (framing checked byte for byte)."""

from __future__ import annotations

import re
from typing import Any

import attrs
import orjson

EVENT = re.compile(rb"id: ([0-9]+-[0-9]+)\nevent: ([A-Za-z_][A-Za-z0-9_.-]*)\ndata: ([^\n]*)\n\n")
COMMENT = re.compile(rb": [^\n]*\n\n")
RETRY = b"retry: 2000\n\n"


@attrs.frozen
class SseEvent:
    id: str
    name: str
    data: Any


def parse_sse(raw: bytes) -> tuple[list[SseEvent], list[bytes]]:
    """Events and comments; fails on any byte that is neither."""
    assert raw.startswith(RETRY), raw[:40]
    position = len(RETRY)
    events: list[SseEvent] = []
    comments: list[bytes] = []
    while position < len(raw):
        match = EVENT.match(raw, position)
        if match is not None:
            events.append(SseEvent(match[1].decode(), match[2].decode(), orjson.loads(match[3])))
        else:
            match = COMMENT.match(raw, position)
            assert match is not None, raw[position : position + 80]
            comments.append(match[0])
        position = match.end()
    return events, comments

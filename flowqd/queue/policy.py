"""Rules both brokers share: retry delays, error records, event ids.

The Lua scripts implement the same rules; their constants come from here
(passed as script arguments) so the two brokers cannot drift apart.
"""

from __future__ import annotations

from typing import Any

# Exponential backoff doubles per attempt; past this it stops growing.
RETRY_DELAY_CAP_S = 86400.0
# Jitter adds up to this share of the delay (never subtracts: a retry is
# never earlier than backoff_s * 2**(attempt-1)).
JITTER_SHARE = 0.25

STALLED_MESSAGE = (
    "job stalled: its worker stopped renewing the lock (crashed, hung or cut off "
    "from the broker) more often than queue.max_stalled allows"
)


def retry_delay_s(backoff_s: float, attempt: int, jitter: float) -> float:
    """Delay before retry number ``attempt`` (1 = first retry); ``jitter`` in [0, 1)."""
    base = min(backoff_s * 2.0 ** min(max(attempt - 1, 0), 40), RETRY_DELAY_CAP_S)
    return base * (1.0 + JITTER_SHARE * jitter)


def error_event_data(error: dict[str, Any] | None) -> dict[str, Any]:
    """The ``error`` terminal event's data: message and failing node only."""
    error = error or {}
    return {"message": str(error.get("message") or "job failed"), "node": error.get("node")}


def stalled_error() -> dict[str, Any]:
    return {"message": STALLED_MESSAGE, "node": None, "reason": "stalled"}


def cancelled_error(reason: str) -> dict[str, Any]:
    return {"message": f"job cancelled: {reason}", "reason": reason}


def cancel_reason(error: dict[str, Any] | None) -> str:
    """The reason a worker gave with a CANCELLED outcome (its ``error["reason"]``)."""
    reason = (error or {}).get("reason")
    return str(reason) if reason else ""


# Redis stream ids are two unsigned 64-bit numbers; a larger one is an error
# from Redis, so it is refused here like any other malformed id.
EVENT_ID_PART_MAX = 2**64 - 1
_EVENT_ID_PART_DIGITS = len(str(EVENT_ID_PART_MAX))


def _event_id_part(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > _EVENT_ID_PART_DIGITS:
        return None
    value = int(text)
    return value if value <= EVENT_ID_PART_MAX else None


def parse_event_id(value: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` (or ``"<ms>"``, ``"0"``) as a sortable pair, each part below 2**64.

    Raises ValueError for anything else, so a bad ``Last-Event-ID`` is the
    caller's 400, not a broker error.
    """
    ms_text, sep, seq_text = value.partition("-")
    ms = _event_id_part(ms_text)
    seq = _event_id_part(seq_text) if sep else 0
    if ms is None or seq is None:
        raise ValueError("bad event id: expected '<number>-<number>' (each below 2**64) or '0'")
    return ms, seq


def resume_point(cursor: tuple[int, int], last: tuple[int, int] | None) -> tuple[int, int]:
    """Where a watch from ``cursor`` starts, given the stream's ``last`` entry (None: empty).

    A cursor past the stream's end (made up, or from another stream) would
    wait for ever: new ids come from a clock that may stay below it. It is
    taken back to just before the last entry, so the watch sees that entry
    again and, if it is the terminal event, ends.
    """
    if last is None:
        return (0, 0) if cursor > (0, 0) else cursor
    if cursor <= last:
        return cursor
    ms, seq = last
    return (ms, seq - 1) if seq > 0 else (ms - 1, EVENT_ID_PART_MAX)

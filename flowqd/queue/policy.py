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


def parse_event_id(value: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` (or ``"<ms>"``, ``"0"``) as a sortable pair.

    Raises ValueError for anything else, so a bad ``Last-Event-ID`` is the
    caller's 400, not a broker error.
    """
    ms, sep, seq = value.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise ValueError(f"bad event id {value!r}: expected '<number>-<number>' or '0'")
    return int(ms), int(seq) if sep else 0

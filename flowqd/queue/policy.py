"""The job rules both backends share: retry delays, error records, cancel reasons.

One source: the embedded backend calls these functions, and the Redis
backend's Lua scripts get every constant and message below from
``lua_rules()``, generated into the prelude of each script as the key names
are (see ``redis/scripts.py``). A rule changed here changes in both.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from flowqd.jobs import EVENT_ID_PART_MAX, PRIORITY_MAX

# Exponential backoff doubles per attempt; past this it stops growing.
RETRY_DELAY_CAP_S = 86400.0
# 2**40 times any backoff is past the cap already; the exponent stops there
# so the arithmetic never overflows.
RETRY_EXPONENT_CAP = 40
# Jitter adds up to this share of the delay (never subtracts: a retry is
# never earlier than backoff_s * 2**(attempt-1)).
JITTER_SHARE = 0.25

# Priorities (PRIORITY_MIN to PRIORITY_MAX, in jobs.py): higher claimed
# first, 0 (the default) the plain FIFO list. Nothing ages a waiting job: a
# steady stream of higher-priority jobs starves lower ones (use another queue
# for work that must not wait behind it).
# A prioritised waiting job's score is level * PRIORITY_SEQ_SPAN + sequence
# (level 0 claimed first), exact in a double: 1000 levels * 2**40 < 2**53.
PRIORITY_SEQ_SPAN = 2**40

STALLED_MESSAGE = (
    "job stalled: its worker stopped renewing the lock (crashed, hung or cut off "
    "from the broker) more often than queue.max_stalled allows"
)
CANCELLED_MESSAGE_PREFIX = "job cancelled: "
DEFAULT_CANCEL_REASON = "cancelled"


def jitter() -> float:
    """A retry's jitter draw, in [0, 1): both backends take it from here."""
    return random.random()


def retry_delay_s(backoff_s: float, attempt: int, jitter: float) -> float:
    """Delay before retry number ``attempt`` (1 = first retry); ``jitter`` in [0, 1)."""
    exponent = min(max(attempt - 1, 0), RETRY_EXPONENT_CAP)
    base = min(backoff_s * 2.0**exponent, RETRY_DELAY_CAP_S)
    return base * (1.0 + JITTER_SHARE * jitter)


def priority_level(priority: int) -> int:
    """A non-zero priority's level within its set (0 is claimed first): 1000 and -1 are 0."""
    return PRIORITY_MAX - priority if priority > 0 else -priority - 1


def priority_score(priority: int, sequence: int) -> int:
    """Where a job of ``priority`` (not 0) enqueued as number ``sequence`` waits in its set."""
    return priority_level(priority) * PRIORITY_SEQ_SPAN + sequence % PRIORITY_SEQ_SPAN


def error_event_data(error: dict[str, Any] | None) -> dict[str, Any]:
    """The ``error`` terminal event's data: message and failing node only."""
    error = error or {}
    return {"message": str(error.get("message") or "job failed"), "node": error.get("node")}


def stalled_error() -> dict[str, Any]:
    return {"message": STALLED_MESSAGE, "node": None, "reason": "stalled"}


def cancelled_error(reason: str) -> dict[str, Any]:
    return {"message": CANCELLED_MESSAGE_PREFIX + reason, "reason": reason}


def cancel_reason(error: dict[str, Any] | None) -> str:
    """The reason a worker gave with a CANCELLED outcome (its ``error["reason"]``)."""
    reason = (error or {}).get("reason")
    return str(reason) if reason else ""


def lua_rules() -> str:
    """Lua locals carrying the rules above, for the prelude of every script.

    Read at call time, not import time, so the rules a backend opens with are
    the module's current ones (the contract tests change them to observe them).
    """
    stalled = stalled_error()
    rules: dict[str, str | int | float] = {
        "RETRY_DELAY_CAP_MS": round(RETRY_DELAY_CAP_S * 1000),
        "RETRY_EXPONENT_CAP": RETRY_EXPONENT_CAP,
        "JITTER_SHARE": JITTER_SHARE,
        "CANCELLED_MESSAGE_PREFIX": CANCELLED_MESSAGE_PREFIX,
        "DEFAULT_CANCEL_REASON": DEFAULT_CANCEL_REASON,
        "PRIORITY_MAX": PRIORITY_MAX,
        "PRIORITY_SEQ_SPAN": PRIORITY_SEQ_SPAN,
        # Stored and sent as they are: JSON made here, not by cjson.
        "STALLED_ERROR": orjson.dumps(stalled).decode(),
        "STALLED_EVENT": orjson.dumps(error_event_data(stalled)).decode(),
    }
    return "".join(f"local {name} = {_lua_literal(value)}\n" for name, value in rules.items())


def _lua_literal(value: str | int | float) -> str:
    if isinstance(value, str):
        # A three-digit decimal escape per byte outside printable ASCII (a digit
        # after a shorter one would join it): any text survives.
        return (
            '"'
            + "".join(
                c
                if " " <= c <= "~" and c not in '"\\'
                else "".join(f"\\{b:03d}" for b in c.encode())
                for c in value
            )
            + '"'
        )
    return repr(value)


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

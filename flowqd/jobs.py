"""Job and event records: plain frozen values shared by brokers, worker and API."""

from __future__ import annotations

import enum
import os
from typing import Any

import attrs
import orjson


class JobStatus(enum.StrEnum):
    WAITING = "waiting"
    DELAYED = "delayed"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

# Every job's event stream ends with exactly one of these.
END = "end"  # data: the flow's result
ERROR = "error"  # data: {"message": str, "node": str | None}
CANCELLED = "cancelled"  # data: {"reason": str}
TERMINAL_EVENTS = frozenset({END, ERROR, CANCELLED})
# Written right after the terminal event of a failed or cancelled job that is
# queued again (data: {"attempt": the next attempt's number}): the stream keeps
# every earlier run's events, and that terminal event is no longer the last word.
RETRIED = "retried"
# An executor's progress report (``NodeContext.progress``): its data is also
# kept on the job record (``Job.progress``, the latest one), written with the
# event by the same flush.
PROGRESS = "progress"


# A job's priority: an integer in this range, higher claimed first, 0 the
# default (the queue's plain FIFO list; see queue/policy.py).
PRIORITY_MIN = -1000
PRIORITY_MAX = 1000


def new_job_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex at a tenth of its
    # cost (bulk enqueue makes thousands at once).
    return os.urandom(16).hex()


@attrs.frozen
class JobSpec:
    """What a producer asks for. ``job_id`` given twice makes one job."""

    flow_id: str
    flow_version: int
    inputs: dict[str, Any] = attrs.Factory(dict)
    job_id: str | None = None
    delay_s: float = 0.0
    max_attempts: int | None = None  # None: queue.max_attempts
    timeout_s: float | None = None  # None: worker.job_timeout_s
    owner: str | None = None  # API key name that created the job
    # W3C trace context the job's spans continue: the ``traceparent`` value,
    # then a newline and ``tracestate`` when there is one (neither may hold a
    # newline). None: not traced, or tracing off where it was enqueued.
    trace: str | None = None
    # Claimed before every waiting job of a lower priority, FIFO within one;
    # higher runs first, 0 is the plain FIFO queue (see policy.PRIORITY_MIN/MAX).
    priority: int = 0


@attrs.frozen
class Job:
    """A job as recorded by the broker."""

    id: str
    flow_id: str
    flow_version: int
    inputs: dict[str, Any]
    status: JobStatus
    attempts: int  # executions started (claims), including the current one
    max_attempts: int
    timeout_s: float | None
    owner: str | None
    created_at: float  # unix seconds
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: dict[str, Any] | None = None  # {"message", "node", "traceback"?, "reason"?}
    nodes: list[dict[str, Any]] = attrs.Factory(list)  # per-node data, in finish order
    worker: str | None = None
    cancel_requested: bool = False
    trace: str | None = None  # as JobSpec.trace
    priority: int = 0  # as JobSpec.priority
    progress: Any = None  # the latest progress report (a number in [0, 1] or an object)


@attrs.frozen
class Claimed:
    """A job a worker holds, with the lock token that proves it."""

    job: Job
    token: str


@attrs.frozen
class Event:
    """One entry of a job's event stream. ``id`` orders events within the job."""

    id: str
    name: str
    data: Any


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


def through_terminal(events: list[Event]) -> tuple[list[Event], bool]:
    """``events`` up to and including the final terminal one, and whether there was one.

    Each run of a job to its end writes exactly one terminal event; a retry
    writes ``RETRIED`` right after it and the job runs again. So a terminal
    event followed by ``RETRIED`` is an earlier run's and the stream goes on;
    any other terminal event ends it (at the end of ``events``: the job had
    ended when they were read). Nothing after the final one is delivered.
    """
    last = len(events) - 1
    for n, event in enumerate(events):
        if event.name in TERMINAL_EVENTS and (n == last or events[n + 1].name != RETRIED):
            return events[: n + 1], True
    return events, False


class OutcomeKind(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"  # retried with backoff while attempts remain, unless ``retry`` is False
    CANCELLED = "cancelled"
    REQUEUE = "requeue"  # back to wait, the attempt not counted (shutdown drain)


@attrs.frozen
class ConversationKey:
    """One conversation: a flow's session (Flowise's ``sessionId``, else ``chatId``)
    as seen by one API key (``owner``; None without keys). Another key's
    conversation of the same session id is another conversation."""

    flow_id: str
    session: str
    owner: str | None


@attrs.frozen
class Turn:
    """One exchange of a conversation: the question and the flow's answer text."""

    job_id: str
    chat_id: str | None  # the request's chatId (Flowise answers it per message)
    question: str
    answer: str
    at: float  # unix seconds, when the job completed


def answer_text(value: Any) -> str:
    """A flow's result as Flowise's answer ``text`` (a string; other results as their
    JSON): what the prediction route answers and what a conversation keeps."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


@attrs.frozen
class TurnWrite:
    """A turn to append to a conversation, recorded with a completed outcome only."""

    key: ConversationKey
    turn: Turn


@attrs.frozen
class Outcome:
    """What a worker reports for a job it holds."""

    job_id: str
    token: str
    kind: OutcomeKind
    result: Any = None
    error: dict[str, Any] | None = None
    nodes: list[dict[str, Any]] = attrs.Factory(list)
    retry: bool = True
    # Appended to its conversation in the same step that records the outcome,
    # and only when it is recorded: a refused (late) outcome writes no turn.
    turn: TurnWrite | None = None


@attrs.frozen
class EmittedEvent:
    """An event a worker appends to a job's stream (not terminal: outcomes write those)."""

    job_id: str
    name: str
    data: Any


@attrs.frozen
class WorkerInfo:
    id: str
    host: str
    pid: int
    started_at: float
    last_seen: float
    jobs_held: int
    concurrency: int
    ready: bool

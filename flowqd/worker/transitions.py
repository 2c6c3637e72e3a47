"""One info line per job transition in the worker: claimed, then how its run ended.

Each line carries the job's facts as fields (``job_id``, ``flow``, ``queue``,
``worker``, ``attempt``, and ``duration_ms`` once it ran), so a collector
filters on them instead of parsing messages. The worker logs two of these a
job, so they are built cheaply: one level check per call; when flowqd's own
handler is the only one (``logs.direct_handler``) its formatter makes the
line from the job's values (``job_line``, with the worker's ``queue`` and
``worker`` pairs made once: ``SharedFields``) without a record, and otherwise
a record is made by copying a template's attributes (``_record``) instead of
``Logger.info``, which also looks up the caller's frame, thread and process:
other handlers see an ordinary ``LogRecord``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flowqd.jobs import Claimed, Job, Outcome, OutcomeKind
from flowqd.logs import FIELDS, SharedFields, direct_handler
from flowqd.queue import policy

log = logging.getLogger("flowqd.worker")

# A record's attributes as Logger.makeRecord sets them, for _record to copy.
_TEMPLATE = logging.LogRecord(log.name, logging.INFO, __file__, 0, "", (), None).__dict__
# What relativeCreated counts from (when logging was imported).
_STARTED: float = getattr(logging, "_startTime", time.time())


def _info(message: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    """``log.info(message, *args, extra=fields)`` for a caller that checked the level."""
    handler = direct_handler(log, logging.INFO)
    if handler is not None:
        handler.emit_fields(logging.INFO, log.name, message % args, fields, time.time())
    else:
        _record(message, args, fields)


def _record(message: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
    """``_info`` by way of a LogRecord: for handlers other than flowqd's own."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    attributes = _TEMPLATE.copy()
    now = time.time()
    attributes["created"] = now
    attributes["msecs"] = (now - int(now)) * 1000
    attributes["relativeCreated"] = (now - _STARTED) * 1000
    attributes["msg"] = message
    attributes["args"] = args
    attributes.update(fields)
    attributes[FIELDS] = fields  # the formatter's shortcut to them
    record.__dict__ = attributes
    log.handle(record)


def shared_fields(worker: str, queue: str) -> SharedFields:
    """The fields every line of ``worker`` (taking jobs from ``queue``) carries."""
    return SharedFields({"queue": queue, "worker": worker})


def _fields(job: Job, shared: SharedFields) -> dict[str, Any]:
    return {"job_id": job.id, "flow": job.flow_id, **shared.fields, "attempt": job.attempts}


def claimed(jobs: list[Claimed], shared: SharedFields) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    message = "job %s claimed (flow %s, attempt %d of %d)"
    handler = direct_handler(log, logging.INFO)  # once for the batch
    if handler is None:
        for item in jobs:
            job = item.job
            args = (job.id, job.flow_id, job.attempts, job.max_attempts)
            _record(message, args, _fields(job, shared))
        return
    line = handler.line_formatter.job_line
    name = log.name
    now = time.time()  # the batch was claimed at once
    lines = []
    for item in jobs:
        job = item.job
        job_id, flow, attempt = job.id, job.flow_id, job.attempts
        text = message % (job_id, flow, attempt, job.max_attempts)
        lines.append(line(now, name, text, job_id, flow, shared, attempt))
    handler.emit_lines(logging.INFO, lines)


def ended(
    job: Job, outcome: Outcome, seconds: float, shared: SharedFields, backoff_s: float
) -> None:
    """How ``job``'s run ended: succeeded, failed, retried (and when), cancelled or requeued."""
    if not log.isEnabledFor(logging.INFO):
        return
    # Microseconds: round() to an int and a division cost a fifth of round(x, 3).
    duration_ms = round(seconds * 1_000_000) / 1000
    kind = outcome.kind
    if kind is OutcomeKind.COMPLETED:
        message = "job %s succeeded"
    elif kind is OutcomeKind.FAILED:
        fields = _fields(job, shared)
        fields["duration_ms"] = duration_ms
        _failed(job, outcome, fields, backoff_s)
        return
    elif kind is OutcomeKind.CANCELLED:
        message = "job %s cancelled"
    else:
        message = "job %s requeued: the worker is shutting down (the attempt is not counted)"
    handler = direct_handler(log, logging.INFO)
    if handler is None:
        fields = _fields(job, shared)
        fields["duration_ms"] = duration_ms
        _record(message, (job.id,), fields)
        return
    line = handler.line_formatter.job_line(
        time.time(),
        log.name,
        message % (job.id,),
        job.id,
        job.flow_id,
        shared,
        job.attempts,
        duration_ms,
    )
    handler.emit_lines(logging.INFO, (line,))


def _failed(job: Job, outcome: Outcome, fields: dict[str, Any], backoff_s: float) -> None:
    error = outcome.error or {}
    node = error.get("node")
    where = f" in node {node}" if node else ""
    message = error.get("message") or "job failed"
    if outcome.retry and job.attempts < job.max_attempts and not job.cancel_requested:
        # The broker draws the jitter; the retry is due within this range.
        earliest = policy.retry_delay_s(backoff_s, job.attempts, 0.0)
        latest = policy.retry_delay_s(backoff_s, job.attempts, 1.0)
        fields["retry_in_s"] = round(earliest, 3)
        _info(
            "job %s failed%s (attempt %d of %d), retried in %.3gs to %.3gs: %s",
            (job.id, where, job.attempts, job.max_attempts, earliest, latest, message),
            fields,
        )
    else:
        _info(
            "job %s failed%s (attempt %d of %d, no retry): %s",
            (job.id, where, job.attempts, job.max_attempts, message),
            fields,
        )

"""Logging to stderr, as text for people or JSON lines for collectors.

A record's facts beyond its message (``job_id``, ``flow``, ``queue``,
``worker``, ``attempt``, ``duration_ms``; the access log's ``method``,
``route``, ``status``, ``key``, ``remote``) are passed with ``extra=``: the
JSON format makes each one a field, the text format appends ``name=value``
pairs to the line, so both say the same thing.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from flowqd.config import LogConfig

LOG_EVERY_S = 60.0

# Libraries whose info lines are noise to an operator (httpx logs every
# request, hypercorn.error every connection); WARNING unless log.level is debug.
THIRD_PARTY = (
    "asyncio",
    "h11",
    "h2",
    "hpack",
    "httpcore",
    "httpx",
    "hypercorn.error",
    "multipart",
    "opentelemetry",
    "quart",
    "trio",
    "urllib3",
    "werkzeug",
)


class ThrottledLog:
    """One warning per condition a minute, with how many more happened since:
    a condition that repeats on every request or flush must not flood the log."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._last: dict[str, float] = {}
        self._missed: dict[str, int] = {}

    def warning(self, condition: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(condition, -math.inf) < LOG_EVERY_S:
            self._missed[condition] = self._missed.get(condition, 0) + 1
            return
        self._last[condition] = now
        missed = self._missed.pop(condition, 0)
        suffix = f" ({missed} more since the last report)" if missed else ""
        self._logger.warning(message + suffix + "; reported at most once a minute", *args)


_queue_log = logging.getLogger("flowqd.queue")


def log_stalled(
    queue: str, requeued: Sequence[str], failed: Sequence[str], cancelled: Sequence[str]
) -> None:
    """One line per job the stalled check took back from a dead or hung worker:
    which job (``job_id``), and what became of it (``stalled``): requeued (it
    runs again), failed (stalled more often than queue.max_stalled allows) or
    cancelled (a cancel was waiting for it). Both brokers' checks call this."""
    for ids, outcome, what in (
        (requeued, "requeued", "requeued, it runs again"),
        (failed, "failed", "failed: stalled more often than queue.max_stalled allows"),
        (cancelled, "cancelled", "cancelled, as was asked before"),
    ):
        for job_id in ids:
            _queue_log.warning(
                "job %s stalled (its worker stopped renewing the lock: crashed, hung or "
                "cut off from the broker); %s",
                job_id,
                what,
                extra={"job_id": job_id, "queue": queue, "stalled": outcome},
            )


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# The access log says these in its message ("GET /route 200"): a text line
# does not repeat them; a JSON line has them as fields.
_TEXT_IN_MESSAGE = frozenset({"method", "route", "status"})


class _Timestamps:
    """ISO-8601 UTC with milliseconds; the part down to the second is reused
    while the second lasts (a job line costs no strftime)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int(record.msecs):03d}Z"


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=``."""
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, exc."""

    def __init__(self) -> None:
        super().__init__()
        self._ts = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text or " " in text or '"' in text or "=" in text:
        return orjson.dumps(text).decode()
    return text


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message key=value ...``, then the traceback if any."""

    def __init__(self) -> None:
        super().__init__()
        self._ts = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self._ts(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        fields = extras(record)
        if fields:
            pairs = " ".join(
                f"{k}={_text_value(v)}" for k, v in fields.items() if k not in _TEXT_IN_MESSAGE
            )
            line = f"{line} {pairs}" if pairs else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def setup_logging(config: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = config.level.upper()
    root.setLevel(level)
    logging.getLogger("flowqd").setLevel(level)
    others = logging.DEBUG if config.level == "debug" else logging.WARNING
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(others)
    # hypercorn logs every request at info: flowqd.access does (log.access).
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)

"""Logging to stderr, as text for people or JSON lines for collectors.

A record's facts beyond its message (``job_id``, ``flow``, ``queue``,
``worker``, ``attempt``, ``duration_ms``; the access log's ``method``,
``route``, ``status``, ``key``, ``remote``) are passed with ``extra=``: the
JSON format makes each one a field, the text format appends ``name=value``
pairs to the line, so both say the same thing.

Lines go to stderr through ``BatchingHandler``: a worker logs two lines a job,
and under load they are written in batches (a WARNING or worse, and a line
after a quiet spell, at once; an info line waits at most ``FLUSH_EVERY_S``,
and in a trio run with ``FlushWhenIdle`` only until the process has nothing
to do).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, TextIO, cast

import orjson
import trio

from flowqd.config import LogConfig

LOG_EVERY_S = 60.0
# A worker logs two lines a job; a write(2) a line cost more than making the
# line. Under load, info lines wait in memory this long at most (what a
# kill -9 can lose), or until this many characters wait, and go in one write.
FLUSH_EVERY_S = 0.1
FLUSH_CHARS = 64 * 1024

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


_LEVEL_NAMES = {
    level: logging.getLevelName(level)
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}

# A record that carries its extra fields (also set as its attributes, for any
# handler) as one dict under this attribute: its formatter need not pick them
# out of the record's twenty-odd attributes. The worker's job lines do.
FIELDS = "flowqd_fields"
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", FIELDS}
# The access log says these in its message ("GET /route 200"): a text line
# does not repeat them; a JSON line has them as fields.
_TEXT_IN_MESSAGE = frozenset({"method", "route", "status"})


class _Timestamps:
    """ISO-8601 UTC with milliseconds; the part down to the second is reused
    while the second lasts, the whole stamp while the millisecond lasts (a
    job line costs no strftime)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._stamp = ""
        # The millisecond [_from, _until) that _stamp says.
        self._from = self._until = -1.0

    def __call__(self, created: float) -> str:
        if self._from <= created < self._until:
            return self._stamp
        second = int(created)
        millis = int((created - second) * 1000)  # LogRecord.msecs
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        self._stamp = f"{self._prefix}.{millis:03d}Z"
        # Times surely inside this millisecond say the same (a microsecond off
        # its edges, where rounding could say the next or the last one).
        self._from = second + millis / 1000 + 1e-6
        self._until = second + (millis + 1) / 1000 - 1e-6
        return self._stamp


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=``."""
    attributes = record.__dict__
    fields: dict[str, Any] | None = attributes.get(FIELDS)
    if fields is not None:
        return fields
    return {k: v for k, v in attributes.items() if k not in _RESERVED}


class SharedFields:
    """Fields that every line of one source carries alike, in this order (a
    worker's ``queue`` and ``worker`` on its job lines), with the text format's
    ``name=value`` pairs of them made once."""

    __slots__ = ("fields", "text")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        # With its leading space, as TextFormatter.line joins pairs.
        self.text = "".join(
            f" {k}={_text_value(v)}" for k, v in fields.items() if k not in _TEXT_IN_MESSAGE
        )


class LineFormatter(logging.Formatter):
    """A formatter that also makes a line without a record (``BatchingHandler.emit_fields``)."""

    def __init__(self) -> None:
        super().__init__()
        self._ts = _Timestamps()

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The line of a record of these, without a traceback."""
        raise NotImplementedError

    def job_line(
        self,
        created: float,
        logger: str,
        message: str,
        job_id: str,
        flow: str,
        shared: SharedFields,
        attempt: int,
        duration_ms: float | None = None,
    ) -> str:
        """``line`` at INFO with the fields job_id, flow, ``shared``'s, attempt, and
        duration_ms unless None, in that order: the worker's two lines a job."""
        fields = {"job_id": job_id, "flow": flow, **shared.fields, "attempt": attempt}
        if duration_ms is not None:
            fields["duration_ms"] = duration_ms
        return self.line(created, "INFO", logger, message, fields)


class JsonFormatter(LineFormatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry = self._entry(
            record.created, record.levelname, record.name, record.getMessage(), extras(record)
        )
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        entry = self._entry(created, level, logger, message, fields)
        return orjson.dumps(entry, default=str).decode()

    def _entry(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        entry = {"ts": self._ts(created), "level": level.lower(), "logger": logger, "msg": message}
        entry.update(fields)
        return entry


def _plain(text: str) -> bool:
    """Whether ``text`` reads unquoted after ``key=``."""
    return bool(text) and " " not in text and '"' not in text and "=" not in text


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if _plain(text) else orjson.dumps(text).decode()


_PADDED = {name: f"{name:<7}" for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}


class TextFormatter(LineFormatter):
    """``ts LEVEL logger: message key=value ...``, then the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(
            record.created, record.levelname, record.name, record.getMessage(), extras(record)
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line

    def line(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> str:
        padded = _PADDED.get(level) or f"{level:<7}"
        line = f"{self._ts(created)} {padded} {logger}: {message}"
        if not fields:
            return line
        pairs = [line]
        for k, v in fields.items():
            if k in _TEXT_IN_MESSAGE:
                continue
            # What _text_value says, inline for the common values (two lines a job).
            kind = v.__class__
            if kind is str:
                if not v or " " in v or '"' in v or "=" in v:
                    v = orjson.dumps(v).decode()
            elif kind is not int and kind is not float:
                v = _text_value(v)
            pairs.append(f"{k}={v}")
        return " ".join(pairs)

    def job_line(
        self,
        created: float,
        logger: str,
        message: str,
        job_id: str,
        flow: str,
        shared: SharedFields,
        attempt: int,
        duration_ms: float | None = None,
    ) -> str:
        # What line() makes of these fields in one f-string: a per-field loop
        # cost twice the rest of the line (and repr is str for a float).
        if attempt.__class__ is not int or (
            duration_ms is not None and duration_ms.__class__ is not float
        ):
            return super().job_line(
                created, logger, message, job_id, flow, shared, attempt, duration_ms
            )
        if not job_id or " " in job_id or '"' in job_id or "=" in job_id:
            job_id = orjson.dumps(job_id).decode()
        if not flow or " " in flow or '"' in flow or "=" in flow:
            flow = orjson.dumps(flow).decode()
        line = (
            f"{self._ts(created)} INFO    {logger}: {message} job_id={job_id} flow={flow}"
            f"{shared.text} attempt={attempt}"
        )
        return line if duration_ms is None else f"{line} duration_ms={duration_ms!r}"


class BatchingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes lines in batches when they come fast.

    A line is written at once when nothing was written for ``FLUSH_EVERY_S``
    (a quiet process's lines are not delayed), and a WARNING or worse is
    written at once with every line before it. Otherwise the line waits until
    ``FLUSH_CHARS`` wait, or at most ``FLUSH_EVERY_S`` for a thread that
    writes what waits (started at the first line that waits). ``flush()``
    writes what waits: the daemon calls it when it stops, however it stops,
    and ``logging.shutdown`` at interpreter exit.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        self._chars = 0
        self._written = -math.inf  # time.monotonic() of the last write
        # Set while lines wait (or waited since the flusher last looked): the
        # flusher clears it, at most once per FLUSH_EVERY_S, not per batch.
        self._due = threading.Event()
        self._flusher: threading.Thread | None = None
        # Set by close(): the flusher's wait between batches ends at once.
        self._stopping = threading.Event()
        _batching.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.levelno)  # under self.lock (Handler.handle)

    def emit_fields(
        self, level: int, logger: str, message: str, fields: dict[str, Any], created: float
    ) -> None:
        """The line of a record of these (no traceback), without making the record:
        for a caller that ``direct_handler`` gave this handler to."""
        formatter = cast(LineFormatter, self.formatter)  # see direct_handler
        line = formatter.line(created, _LEVEL_NAMES[level], logger, message, fields)
        with self._locked():
            self._add(line, level)

    def emit_lines(self, level: int, lines: Sequence[str]) -> None:
        """Lines this handler's ``line_formatter`` made, without records: for a
        caller that ``direct_handler`` gave this handler to."""
        with self._locked():
            for line in lines:
                self._add(line, level)

    @property
    def line_formatter(self) -> LineFormatter:
        """Its formatter, once ``direct_handler`` said it is a LineFormatter."""
        return cast(LineFormatter, self.formatter)

    def _add(self, line: str, level: int) -> None:
        # Called under self.lock, as flush() and the flusher are.
        waiting = self._waiting
        if level >= logging.WARNING:
            waiting.append(line)
            self._write_waiting()
            return
        if not waiting:
            now = time.monotonic()
            if now - self._written >= FLUSH_EVERY_S:
                self._write(line + "\n", now)
                return
            if not self._due.is_set():
                self._due.set()
            if self._flusher is None:
                self._start_flusher()
        waiting.append(line)
        self._chars += len(line)
        if self._chars >= FLUSH_CHARS:
            self._write_waiting()

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle without its two method calls around the lock (a worker
        # sends two records a job); with filters, as it was.
        if self.filters:
            return bool(super().handle(record))
        with self._locked():
            self.emit(record)
        return True

    def flush(self) -> None:
        with self._locked():
            self._write_waiting()
            super().flush()

    def close(self) -> None:
        with self._locked():
            self._write_waiting()
            self._stopping.set()
            self._due.set()  # the flusher wakes and ends
        super().close()

    def _write_waiting(self) -> None:
        if self._waiting:
            text = "\n".join(self._waiting) + "\n"
            self._waiting = []
            self._chars = 0
            self._write(text, time.monotonic())

    def _write(self, text: str, now: float) -> None:
        self._written = now
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            # stderr is closed or gone: there is nowhere left to say so, and
            # the flusher thread must live on for the lines that follow.
            pass

    def _start_flusher(self) -> None:
        self._flusher = threading.Thread(
            target=self._run_flusher, name="flowqd.logs.flusher", daemon=True
        )
        self._flusher.start()

    def _run_flusher(self) -> None:
        while not self._stopping.is_set():
            self._due.wait()
            if self._stopping.wait(FLUSH_EVERY_S):
                return  # close() wrote what waited
            with self._locked():
                self._write_waiting()
                self._due.clear()

    def _forget_flusher(self) -> None:
        # The lines that waited are the parent's to write, and the thread is not here.
        self._waiting = []
        self._chars = 0
        self._flusher = None
        # Their locks may have been held at the fork.
        self._due = threading.Event()
        self._stopping = threading.Event()

    def _locked(self) -> threading.RLock:
        assert self.lock is not None  # created by Handler.__init__
        return self.lock


_batching: weakref.WeakSet[BatchingHandler] = weakref.WeakSet()


def direct_handler(logger: logging.Logger, level: int) -> BatchingHandler | None:
    """The one handler ``logger``'s lines at ``level`` reach, if it is flowqd's own
    and nothing filters on the way: its ``emit_fields`` then writes what a record
    would have written, without the record. None otherwise (another handler, a
    filter, pytest's capture): make the record.

    The worker writes two lines a job; a LogRecord, Logger.handle and
    Formatter.format cost three times the line itself. The caller checked
    ``logger.isEnabledFor(level)``.
    """
    found: BatchingHandler | None = None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        for handler in node.handlers:
            if (
                found is not None
                or not isinstance(handler, BatchingHandler)
                or handler.__class__ is not BatchingHandler  # a subclass may write otherwise
                or handler.filters
                or level < handler.level
                # Its own line() says what format() would; a subclass's may not.
                or handler.formatter.__class__ not in (TextFormatter, JsonFormatter)
            ):
                return None
            found = handler
        if not node.propagate:
            break
        node = node.parent
    return found


def _after_fork() -> None:
    for handler in _batching:
        handler._forget_flusher()


os.register_at_fork(after_in_child=_after_fork)


class FlushWhenIdle(trio.abc.Instrument):
    """Writes the lines that wait as soon as the trio run has nothing to do (it
    is about to wait for I/O or a timer): lines wait only while the process is
    busy, and a line is on stderr before the process waits for what follows
    from it (a Redis reply, a client's next request)."""

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0:
            for handler in _active:
                if handler._waiting:
                    handler.flush()


# The handlers setup_logging installed (FlushWhenIdle looks at these).
_active: list[BatchingHandler] = []


def flush_logs() -> None:
    """Write the log lines that wait in a batch (at shutdown, before a traceback)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def setup_logging(config: LogConfig) -> None:
    for old in logging.getLogger().handlers:
        if isinstance(old, BatchingHandler):
            old.close()
    handler = BatchingHandler(sys.stderr)
    _active[:] = [handler]
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

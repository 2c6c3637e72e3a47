"""Logging to stderr, as text for people or JSON lines for collectors."""

from __future__ import annotations

import logging
import math
import sys
import time

import orjson

from flowqd.config import LogConfig

LOG_EVERY_S = 60.0


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


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # Values passed through ``extra=`` become fields of their own.
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # UTC timestamps

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )


def setup_logging(config: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # hypercorn logs every request at info; that is the metrics' job.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)

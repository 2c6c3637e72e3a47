"""flowqd's log handler: a burst of info lines waits in a batch, a WARNING or
worse goes at once with every line before it, nothing waits past a flush or
an idle trio run; and the shortcut the worker's job lines take
(``direct_handler``, ``emit_fields``) writes what a LogRecord would."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from flowqd import logs
from flowqd.logs import BatchingHandler, JsonFormatter, LineFormatter, TextFormatter

FIELDS = {
    "job_id": "0194c3a8-0001-7000-8000-00000000abcd",
    "flow": "a flow with spaces",
    "queue": "",
    "worker": "host:1:abcdef",
    "attempt": 2,
    "duration_ms": 0.125,
    "retry_in_s": None,
    "route": "/not/repeated/in/text",
}


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def handler(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchingHandler]:
    # Never written by the clock here: only by what the test does.
    monkeypatch.setattr(logs, "FLUSH_EVERY_S", 3600.0)
    handler = BatchingHandler(stream)
    handler.setFormatter(TextFormatter())
    yield handler
    handler.close()


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(f"flowqd.test_logs.{name}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_a_burst_waits_and_a_warning_writes_it_in_order(
    handler: BatchingHandler, stream: io.StringIO
) -> None:
    log = _logger(handler, "burst")
    log.info("first")  # after a quiet spell: at once
    assert "first" in stream.getvalue()
    log.info("second")
    log.info("third")
    assert "second" not in stream.getvalue()
    log.warning("trouble")
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["first", "second", "third", "trouble"]


def test_flush_and_an_idle_trio_run_write_what_waits(
    handler: BatchingHandler, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _logger(handler, "idle")
    log.info("first")
    log.info("second")
    assert "second" not in stream.getvalue()
    handler.flush()
    assert "second" in stream.getvalue()
    log.info("third")
    monkeypatch.setattr(logs, "_active", [handler])
    logs.FlushWhenIdle().before_io_wait(0)  # busy: more to run, the line waits
    assert "third" not in stream.getvalue()
    logs.FlushWhenIdle().before_io_wait(0.5)  # idle
    assert "third" in stream.getvalue()


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_the_direct_line_is_the_records_line(
    formatter: LineFormatter, handler: BatchingHandler, stream: io.StringIO
) -> None:
    handler.setFormatter(formatter)
    log = _logger(handler, "direct")
    record = log.makeRecord(
        log.name, logging.INFO, __file__, 1, "job %s ran %d", ("x y", 3), None, extra=FIELDS
    )
    log.handle(record)
    assert logs.direct_handler(log, logging.INFO) is handler
    handler.emit_fields(logging.INFO, log.name, "job x y ran 3", FIELDS, record.created)
    handler.flush()
    by_record, direct = stream.getvalue().splitlines()
    assert direct == by_record
    assert "job_id=0194c3a8-0001-7000-8000-00000000abcd" in direct or '"job_id"' in direct


def test_no_direct_line_past_a_filter_another_handler_or_a_level(
    handler: BatchingHandler,
) -> None:
    log = _logger(handler, "filtered")
    assert logs.direct_handler(log, logging.INFO) is handler
    log.addFilter(lambda record: True)
    assert logs.direct_handler(log, logging.INFO) is None
    log.filters.clear()
    log.addHandler(logging.NullHandler())
    assert logs.direct_handler(log, logging.INFO) is None
    log.handlers[:] = [handler]
    handler.setLevel(logging.WARNING)
    assert logs.direct_handler(log, logging.INFO) is None
    handler.setLevel(logging.NOTSET)
    handler.setFormatter(logging.Formatter())
    assert logs.direct_handler(log, logging.INFO) is None


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
@pytest.mark.parametrize(
    ("job_id", "flow", "attempt", "duration_ms"),
    [
        ("0194c3a8abcd", "greet", 1, 0.125),
        ("0194c3a8abcd", "greet", 2, None),
        ("id with spaces", 'a "quoted" flow', 3, 1000.0),
        ("", "a=b", 1, 12.5),
        ("x", "y", True, 1),  # not an int and a float: the generic way, same line
    ],
)
def test_a_job_line_is_the_line_of_its_fields(
    formatter: LineFormatter, job_id: str, flow: str, attempt: int, duration_ms: float | None
) -> None:
    shared = logs.SharedFields({"queue": "q 1", "worker": "host:1:abcdef", "route": "/r"})
    fields = {"job_id": job_id, "flow": flow, **shared.fields, "attempt": attempt}
    if duration_ms is not None:
        fields["duration_ms"] = duration_ms
    created = 1733400000.1234
    expected = formatter.line(created, "INFO", "flowqd.worker", "job ran", fields)
    assert expected == formatter.job_line(
        created, "flowqd.worker", "job ran", job_id, flow, shared, attempt, duration_ms
    )

"""The worker's duration histogram: ``job_ended`` counts what ``observe`` would."""

from __future__ import annotations

import pytest

from flowqd.metrics import Registry
from flowqd.worker.metrics import WorkerMetrics


@pytest.mark.parametrize("queue", [None, "q1"])
def test_job_ended_counts_what_observe_counts(queue: str | None) -> None:
    fast, plain = WorkerMetrics(Registry(), queue), WorkerMetrics(Registry(), queue)
    for outcome, seconds in [
        ("completed", 0.0004),
        ("completed", 0.03),
        ("failed", 2.0),
        ("completed", 100.0),
        ("failed", 0.001),
    ]:
        fast.job_ended(outcome, seconds)
        plain.duration.observe(seconds, outcome=outcome)
    assert fast.duration.current() == plain.duration.current()
    assert len(fast.duration.current()) == 2

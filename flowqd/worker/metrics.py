"""The worker's metrics."""

from __future__ import annotations

from bisect import bisect_left

import attrs

from flowqd.metrics import Counter, Gauge, Histogram, Registry


class _QueueCounter(Counter):
    """The registry's counter ``shared``, every series of it labelled ``queue``.

    It writes into ``shared``'s own series, so pools of one registry add up
    in one metric; the label costs one more item in the series key.
    """

    def __init__(self, shared: Counter, queue: str) -> None:
        super().__init__(shared.name, shared.help, across=shared.across)
        self.values = shared.values
        self._queue = queue

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        labels["queue"] = self._queue
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount


class _QueueHistogram(Histogram):
    """As ``_QueueCounter``, for a histogram."""

    def __init__(self, shared: Histogram, queue: str) -> None:
        super().__init__(shared.name, shared.help)
        self.series = shared.series
        self._queue = queue

    def observe(self, value: float, **labels: str) -> None:
        labels["queue"] = self._queue
        super().observe(value, **labels)


@attrs.define(eq=False)
class WorkerMetrics:
    """``queue``: the queue of the pool these figures are of (a ``queue`` label on
    its jobs' figures); None leaves the label out."""

    registry: Registry
    queue: str | None = None
    jobs: Counter = attrs.field(init=False)
    duration: Histogram = attrs.field(init=False)
    running: Gauge = attrs.field(init=False)
    renewals: Counter = attrs.field(init=False)
    flushes: Counter = attrs.field(init=False)
    # The duration histogram's series by outcome (Histogram.series' lists).
    _durations: dict[str, list[float]] = attrs.field(init=False, factory=dict)

    def job_ended(self, outcome: str, seconds: float) -> None:
        """``duration.observe(seconds, outcome=outcome)``: once a job, so the series is
        looked up by outcome alone, not by sorting labels."""
        series = self._durations.get(outcome)
        if series is None:
            outcome = str(outcome)  # the label a plain str, if given an OutcomeKind
            self.duration.observe(seconds, outcome=outcome)
            labels = (
                {"outcome": outcome}
                if self.queue is None
                else {"outcome": outcome, "queue": self.queue}
            )
            self._durations[outcome] = self.duration.series[tuple(sorted(labels.items()))]
            return
        buckets = Histogram.BUCKETS
        index = bisect_left(buckets, seconds)
        if index < len(buckets):
            series[index] += 1
        series[-2] += seconds
        series[-1] += 1

    def __attrs_post_init__(self) -> None:
        add = self.registry.add
        self.jobs = add(Counter("flowqd_worker_jobs_total", "Jobs finished by outcome."))
        self.duration = add(Histogram("flowqd_worker_job_seconds", "Job run time by outcome."))
        if self.queue is not None:
            self.jobs = _QueueCounter(self.jobs, self.queue)
            self.duration = _QueueHistogram(self.duration, self.queue)
        self.running = add(Gauge("flowqd_worker_jobs_running", "Jobs held right now."))
        self.renewals = add(
            Counter(
                "flowqd_worker_lock_renewals_total",
                "Lock renewal calls (one per interval for all held jobs).",
            )
        )
        self.flushes = add(
            Counter("flowqd_worker_flushes_total", "Batched writes of events and outcomes.")
        )

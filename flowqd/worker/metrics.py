"""The worker's metrics."""

from __future__ import annotations

import attrs

from flowqd.metrics import Counter, Gauge, Histogram, Registry


@attrs.define(eq=False)
class WorkerMetrics:
    registry: Registry
    jobs: Counter = attrs.field(init=False)
    duration: Histogram = attrs.field(init=False)
    running: Gauge = attrs.field(init=False)
    renewals: Counter = attrs.field(init=False)
    flushes: Counter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        add = self.registry.add
        self.jobs = add(Counter("flowqd_worker_jobs_total", "Jobs finished by outcome."))
        self.duration = add(Histogram("flowqd_worker_job_seconds", "Job run time by outcome."))
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

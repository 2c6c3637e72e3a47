"""The main role's figures for ``GET /metrics``."""

from __future__ import annotations

import attrs

from flowqd.metrics import Counter, Gauge, Histogram, Registry


@attrs.define(eq=False)
class ApiMetrics:
    registry: Registry
    requests: Counter = attrs.field(init=False)
    latency: Histogram = attrs.field(init=False)
    jobs: Counter = attrs.field(init=False)
    enqueued: Counter = attrs.field(init=False)
    rate_limited: Counter = attrs.field(init=False)
    queue_depth: Gauge = attrs.field(init=False)
    broker_up: Gauge = attrs.field(init=False)
    broker: Gauge = attrs.field(init=False)
    streams: Gauge = attrs.field(init=False)
    waiting: Gauge = attrs.field(init=False)
    open_streams: int = 0
    open_waits: int = 0

    def __attrs_post_init__(self) -> None:
        add = self.registry.add
        self.requests = add(
            Counter("flowqd_api_requests_total", "HTTP requests by route, method and status.")
        )
        self.latency = add(
            Histogram("flowqd_api_request_seconds", "Time to the response headers, by route.")
        )
        self.jobs = add(
            Counter(
                "flowqd_api_jobs_total",
                "Jobs the API waited on, by outcome (completed, failed, cancelled, timeout).",
            )
        )
        self.enqueued = add(Counter("flowqd_api_jobs_enqueued_total", "Jobs enqueued."))
        self.rate_limited = add(
            Counter("flowqd_api_rate_limited_total", "Requests refused with 429, by flow.")
        )
        self.queue_depth = add(Gauge("flowqd_queue_jobs", "Jobs per state (read at scrape)."))
        self.broker_up = add(
            Gauge("flowqd_broker_up", "1 when the broker answered the last scrape, else 0.")
        )
        self.broker = add(
            Gauge("flowqd_broker_stat", "Broker figures (connections held and the like).")
        )
        self.streams = add(
            Gauge(
                "flowqd_api_streams_open", "Event streams open now.", read=lambda: self.open_streams
            )
        )
        self.waiting = add(
            Gauge(
                "flowqd_api_predictions_waiting",
                "Predictions waiting for their result now.",
                read=lambda: self.open_waits,
            )
        )

    def stream_opened(self) -> None:
        self.open_streams += 1

    def stream_closed(self) -> None:
        self.open_streams -= 1

"""The main role's figures for ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import trio

from flowqd.errors import BrokerUnavailable
from flowqd.metrics import BrokerFigures, Counter, Gauge, Histogram, Registry
from flowqd.metrics_share import MetricsShare
from flowqd.queue.roles import QueueControl


@attrs.define(eq=False)
class ApiMetrics:
    registry: Registry
    requests: Counter = attrs.field(init=False)
    latency: Histogram = attrs.field(init=False)
    jobs: Counter = attrs.field(init=False)
    enqueued: Counter = attrs.field(init=False)
    rate_limited: Counter = attrs.field(init=False)
    queue_depth: Gauge = attrs.field(init=False)
    queue_waiting: Gauge = attrs.field(init=False)
    queue_paused: Gauge = attrs.field(init=False)
    broker_up: Gauge = attrs.field(init=False)
    broker: BrokerFigures = attrs.field(init=False)
    streams: Gauge = attrs.field(init=False)
    waiting: Gauge = attrs.field(init=False)
    open_streams: int = 0
    open_waits: int = 0
    # The view across server.processes, once the daemon has set it up.
    share: MetricsShare | None = None

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
        # Read from the queue by whichever process answers the scrape: not summed.
        self.queue_depth = add(
            Gauge("flowqd_queue_jobs", "Jobs per queue and state (read at scrape).", across="local")
        )
        self.queue_waiting = add(
            Gauge(
                "flowqd_queue_waiting",
                "Waiting jobs per queue by the sign of their priority (read at scrape).",
                across="local",
            )
        )
        self.queue_paused = add(
            Gauge(
                "flowqd_queue_paused", "1 while a queue is paused (read at scrape).", across="local"
            )
        )
        self.broker_up = add(
            Gauge(
                "flowqd_broker_up",
                "1 when the broker answered this scrape in time, else 0.",
                across="local",
            )
        )
        self.broker = BrokerFigures(self.registry)
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

    async def refresh(
        self,
        queues: Mapping[str, QueueControl],
        timeout: float,  # noqa: ASYNC109
    ) -> None:
        """Read the figures that live in the queues (``queues`` by name, the default
        first), within ``timeout`` (server.broker_timeout_s) for them all."""
        read = []
        try:
            with trio.fail_after(timeout):
                for name, control in queues.items():
                    read.append(
                        (
                            name,
                            await control.counts(),
                            await control.waiting_by_priority(),
                            await control.is_paused(),
                        )
                    )
                self.broker.record(await next(iter(queues.values())).statistics())
        except (BrokerUnavailable, trio.TooSlowError):
            self.broker_up.set(0)
            return
        self.broker_up.set(1)
        for name, counts, by_priority, paused in read:
            self.queue_paused.set(int(paused), queue=name)
            for sign, n in by_priority.items():
                self.queue_waiting.set(n, queue=name, priority=sign)
            for status, n in counts.items():
                self.queue_depth.set(n, queue=name, state=status.value)

    async def refresh_local(self, control: QueueControl) -> None:
        """The broker's figures about this process (its connections): no round trip."""
        self.broker.record(await control.statistics())

    def render(self) -> bytes:
        """The text format, across every API process when there are several."""
        return self.registry.render() if self.share is None else self.share.render()

    def stream_opened(self) -> None:
        self.open_streams += 1

    def stream_closed(self) -> None:
        self.open_streams -= 1

"""The worker: claims jobs, runs their flows, renews locks, reports outcomes.

Everything the worker does runs in the nursery of ``Worker.run``. Jobs run in
a nursery of their own whose cancel scope gets a deadline when the worker
drains: jobs that finish within the grace report their outcome, the rest are
cancelled and put back in the queue with their attempt not counted.

Round trips are the cost that matters, so nothing here talks to the queue per
job: claims take many jobs per call, events and outcomes wait in the
``Outbox`` and one flusher writes them in one call per scheduler pass, and one
renewal call covers every held lock. Claimed jobs run in the long-lived
runner tasks of a ``RunnerPool``, not in a task each.

The worker sees the queue only through ``WorkQueue`` (flowqd/queue/roles.py).
Modules: ``core`` (the Worker: claims, runs jobs, renewals, heartbeats,
readiness), ``pools`` (one Worker per queue of ``worker.queues``),
``runners``, ``outbox``, ``timeouts``, ``held`` (a held job and its stop
reason), ``metrics``.
"""

from flowqd.worker.core import Worker as Worker
from flowqd.worker.held import StopReason as StopReason
from flowqd.worker.metrics import WorkerMetrics as WorkerMetrics
from flowqd.worker.outbox import FLUSH_EVENTS_MAX as FLUSH_EVENTS_MAX
from flowqd.worker.pools import WorkerPools as WorkerPools

__all__ = ["FLUSH_EVENTS_MAX", "StopReason", "Worker", "WorkerMetrics", "WorkerPools"]

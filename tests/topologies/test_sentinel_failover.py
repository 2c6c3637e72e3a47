"""``kill -9`` of the Sentinel-watched primary while 1,000 jobs flow.

A ``--role main`` and a ``--role worker`` flowqd find the primary through the
three sentinels. A third of the way into the load the replica falls behind
(its replication stream is held in a relay, as a slow or cut-off link would),
three more enqueue requests are answered, and then the primary dies with
``kill -9`` and the relay is cut. The sentinels promote the replica
(down-after 1000 ms), and the dead node is started again as its replica, as an
orchestrator would.

Throughout, the API answers every request within ``server.broker_timeout_s``
plus a margin (200, or 503 while no primary answers), and answers 200 again
within 30 s of the kill. Predictions sent while no primary answers get 503
at once; those waiting across the failover, and those sent after, get 200.
With ``redis.wait_replicas = 1`` no acknowledged job is lost (the enqueues of
the lag answered 503 and were sent again) and each ends exactly once
(completed, or failed by the stalled rule). With 0 the jobs
acknowledged during the lag are lost: the test counts and prints them, and
asserts only what holds for the jobs that survived.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from flowqd.jobs import Event, Job, JobStatus
from flowqd.queue.policy import STALLED_MESSAGE
from tests.daemonproc import Daemon, start_daemon
from tests.faults.helpers import (
    assert_no_crash,
    delay_flow,
    gather,
    metric,
    open_observer,
    poll,
    settings,
    terminal_count,
    write_flows,
)
from tests.redisproc import redis_command
from tests.sentinelproc import MASTER, SENTINEL_PASSWORD, ReplicationLink, SentinelTopology

pytestmark = pytest.mark.slow

JOBS = 1000
BATCH = 50
DELAY_MS = 200
PREDICTIONS = 5
BROKER_TIMEOUT_S = 1.0
PREDICTION_TIMEOUT_S = 30.0
MARGIN_S = 2.0
BACK_WITHIN_S = 30.0


@attrs.define
class Record:
    """What the clients of the API saw."""

    client: httpx.AsyncClient
    nursery: trio.Nursery
    acknowledged: list[str] = attrs.Factory(list)
    answers: int = 0  # enqueue requests answered, 202 or 503
    resent_batches: int = 0
    # (sent at, status or None for no answer, seconds to answer)
    polls: list[tuple[float, int | None, float]] = attrs.Factory(list)
    # By when they were sent: (status or None, seconds to answer, question, answer text)
    predictions: dict[str, list[tuple[int | None, float, str, object]]] = attrs.Factory(dict)
    figures: dict[str, float] = attrs.Factory(dict)
    killed_at: float | None = None
    done: bool = False

    def back_after(self) -> float | None:
        """Seconds from the kill to the first 200 to a request sent after it."""
        assert self.killed_at is not None
        later = [t for t, status, _ in self.polls if t > self.killed_at and status == 200]
        return min(later) - self.killed_at if later else None

    def predict(self, when: str, question: str) -> None:
        self.nursery.start_soon(self._predict, when, question)

    async def _predict(self, when: str, question: str) -> None:
        sent = time.monotonic()
        text: object = None
        try:
            response = await self.client.post(
                "/api/v1/prediction/work",
                json={"question": question},
                timeout=PREDICTION_TIMEOUT_S + MARGIN_S,
            )
            status: int | None = response.status_code
            body = response.json()
            text = body.get("text") if status == 200 else body.get("message")
        except httpx.TransportError:
            status = None
        took = time.monotonic() - sent
        self.predictions.setdefault(when, []).append((status, took, question, text))


def sentinel_env(topology: SentinelTopology, queue: str, wait_replicas: int) -> dict[str, str]:
    return {
        "QUEUE_NAME": queue,
        "FLOWQD_REDIS__SENTINELS": ",".join(topology.sentinel_addresses),
        "FLOWQD_REDIS__SENTINEL_MASTER": MASTER,
        "FLOWQD_REDIS__SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        "FLOWQD_REDIS__WAIT_REPLICAS": str(wait_replicas),
    }


def daemon_args(flows: Path) -> tuple[list[str], list[str]]:
    common = settings(
        redis__command_timeout_s=1, redis__connect_timeout_s=1, redis__wait_timeout_s=0.5
    )
    main = settings(
        flows__paths=flows,
        server__broker_timeout_s=BROKER_TIMEOUT_S,
        server__prediction_timeout_s=PREDICTION_TIMEOUT_S,
    )
    worker = settings(worker__concurrency=50, worker__lock_ttl_s=5, worker__stalled_interval_s=1)
    return ["--role", "main", *common, *main], ["--role", "worker", *common, *worker]


@pytest.mark.parametrize("wait_replicas", [1, 0])
async def test_kill_9_of_the_primary_under_load(
    sentinels: SentinelTopology, queue_name: str, tmp_path: Path, wait_replicas: int
) -> None:
    env = sentinel_env(sentinels, queue_name, wait_replicas)
    main_args, worker_args = daemon_args(
        write_flows(tmp_path / "flows", [delay_flow("work", DELAY_MS)])
    )
    with trio.fail_after(150):
        async with (
            trio.open_nursery() as relay,
            start_daemon(main_args, env=env, cwd=str(tmp_path)) as main,
            start_daemon(worker_args, env=env, cwd=str(tmp_path)) as worker,
            httpx.AsyncClient(base_url=main.api, timeout=BROKER_TIMEOUT_S + MARGIN_S) as client,
        ):
            link = await replicate_through_link(sentinels, relay)
            async with trio.open_nursery() as nursery:
                record = Record(client, nursery)
                nursery.start_soon(produce, record)
                nursery.start_soon(watch_api, record)
                await lag_kill_and_heal(sentinels, link, record, main)
                with trio.fail_after(60):
                    await poll(lambda: _produced(record))
                record.done = True
            ids = record.acknowledged
            async with open_observer(sentinels.node(sentinels.primary()).url, queue_name) as obs:
                jobs = await gather(obs.broker.jobs.get_job, ids)
                kept = [i for i, job in zip(ids, jobs, strict=True) if job is not None]
                with trio.fail_after(60):
                    finished = await obs.all_finished(kept)
                events = await gather(obs.events, kept)
                where = await gather(obs.in_finished_sets, kept)
            assert_no_crash(main, worker)
            switched = [d for d in (main, worker) if "+switch-master" in d.text()]
    report(record, wait_replicas, len(ids) - len(kept), finished, events, switched)
    assert len(ids) == JOBS
    try:
        check_api(record)
    except AssertionError:
        print(sentinels.logs(), "\n--- main\n", main.text()[-6000:])
        raise
    if wait_replicas:
        assert len(kept) == len(ids), "acknowledged jobs lost despite wait_replicas = 1"
    for job, job_events, sets in zip(finished, events, where, strict=True):
        assert terminal_count(job_events) == 1, job_events
        assert sets == [job.status.value], (job.id, sets)
        if job.status == JobStatus.FAILED:
            assert job.error is not None and job.error["message"] == STALLED_MESSAGE, job.error
        else:
            assert job.status == JobStatus.COMPLETED, job
        # At least once: a second run only after the stalled check gave the job back.
        assert sum(e.name == "started" for e in job_events) <= 2, job_events


def check_api(record: Record) -> None:
    """Every answer in time, 200 or 503; 200 again soon; predictions as promised."""
    statuses = Counter(status for _, status, _ in record.polls)
    assert set(statuses) <= {200, 503}, statuses
    slow = [(status, took) for _, status, took in record.polls if took > BROKER_TIMEOUT_S + 1]
    assert not slow, slow
    back = record.back_after()
    assert back is not None and back < BACK_WITHIN_S, back
    across, outage, after = (record.predictions[k] for k in ("across", "outage", "after"))
    # Waiting when the primary died: answered once the job ran on the new one.
    assert [(status, text) for status, _, q, text in across] == [(200, q) for _, _, q, _ in across]
    assert {status for status, _, _, _ in outage} <= {200, 503}, outage
    refused = [took for status, took, _, _ in outage if status == 503]
    assert refused and max(refused) < BROKER_TIMEOUT_S + MARGIN_S, outage
    assert [(status, text) for status, _, q, text in after] == [(200, q) for _, _, q, _ in after]


async def produce(record: Record) -> None:
    """Enqueue ``JOBS`` jobs in batches; a batch refused (503) or unanswered is
    sent again with the same ids (enqueueing is idempotent by job id)."""
    ids = [f"f-{i}" for i in range(JOBS)]
    for start in range(0, JOBS, BATCH):
        batch = ids[start : start + BATCH]
        body = {"jobs": [{"flow": "work", "job_id": i, "inputs": {"question": i}} for i in batch]}
        while True:
            try:
                response = await record.client.post("/api/v1/jobs", json=body)
            except httpx.TransportError:
                response = None
            record.answers += response is not None
            if response is not None and response.status_code == 202:
                record.acknowledged += batch
                break
            assert response is None or response.status_code == 503, response.text
            record.resent_batches += 1
            await trio.sleep(0.1)
        await trio.sleep(0.05)


async def watch_api(record: Record) -> None:
    """A GET every 50 ms, each timed: the API must answer, 200 or 503, in time."""
    while not record.done:
        sent = time.monotonic()
        try:
            status: int | None = (await record.client.get("/api/v1/queue")).status_code
        except httpx.TransportError:
            status = None
        record.polls.append((sent, status, time.monotonic() - sent))
        await trio.sleep(0.05)


async def replicate_through_link(
    topology: SentinelTopology, nursery: trio.Nursery
) -> ReplicationLink:
    """Point the replica at a relay to the primary; return once it is in sync."""
    primary, replica = topology.primary(), topology.replica()
    link = ReplicationLink(primary)
    await nursery.start(link.run)
    redis_command(replica, "REPLICAOF", "127.0.0.1", link.port)

    async def in_sync() -> bool:
        info = bytes(redis_command(replica, "INFO", "replication")).decode()
        return f"master_port:{link.port}" in info and "master_link_status:up" in info

    with trio.fail_after(10):
        await poll(in_sync)
    return link


async def lag_kill_and_heal(
    topology: SentinelTopology, link: ReplicationLink, record: Record, main: Daemon
) -> None:
    """A third of the way in, with predictions waiting, hold the replica's
    stream; after three more enqueue answers, ``kill -9`` the primary and cut
    the link; predict until the API is back; once the sentinels have promoted
    the replica, start the dead node as its replica, and predict again."""
    await poll(lambda: _acknowledged_at_least(record, JOBS // 3))
    for i in range(PREDICTIONS):
        record.predict("across", f"across-{i}")
    await poll(lambda: _waiting_at_least(record, main.api, PREDICTIONS))
    link.hold()
    before, answered = len(record.acknowledged), record.answers
    await poll(lambda: _answered_at_least(record, answered + 3))
    record.figures["acknowledged_in_lag"] = len(record.acknowledged) - before
    old = await trio.to_thread.run_sync(topology.kill_primary)
    link.cut()
    record.killed_at = killed = time.monotonic()
    record.nursery.start_soon(predict_during_outage, record)
    await trio.to_thread.run_sync(topology.heal)
    record.figures["healed_s"] = time.monotonic() - killed
    assert topology.primary() != old, topology.logs()
    for i in range(PREDICTIONS):
        record.predict("after", f"after-{i}")


async def predict_during_outage(record: Record) -> None:
    """A prediction every 100 ms from the kill until the API answers 200 again."""
    for i in range(1000):
        if record.back_after() is not None:
            return
        record.predict("outage", f"outage-{i}")
        await trio.sleep(0.1)


def report(
    record: Record,
    wait_replicas: int,
    lost: int,
    finished: list[Job],
    events: list[list[Event]],
    switched: list[Daemon],
) -> None:
    figures = record.figures
    refused = sum(status == 503 for t, status, _ in record.polls if t > (record.killed_at or 0))
    slowest = max((took for _, _, took in record.polls), default=0.0)
    starts = Counter(sum(e.name == "started" for e in es) for es in events)
    outage = Counter(status for status, _, _, _ in record.predictions.get("outage", []))
    refused_in = max(
        (t for st, t, _, _ in record.predictions.get("outage", []) if st == 503), default=0
    )
    across = max((t for _, t, _, _ in record.predictions.get("across", [])), default=0)
    print(
        f"\nSentinel failover, kill -9 of the primary with {JOBS} jobs (wait_replicas = "
        f"{wait_replicas}): API 200 again {record.back_after():.2f}s after the kill, "
        f"{refused} polls answered 503 meanwhile, slowest answer {slowest:.2f}s; predictions "
        f"sent meanwhile answered {dict(outage)} (503s within {refused_in:.2f}s), those "
        f"waiting across the kill answered within {across:.2f}s; topology healed "
        f"{figures['healed_s']:.2f}s "
        f"after the kill; {record.resent_batches} enqueue batches refused and resent; "
        f"{figures['acknowledged_in_lag']:g} jobs acknowledged while the replica lagged; "
        f"acknowledged jobs lost: {lost}; outcomes "
        f"{dict(Counter(j.status.value for j in finished))}; runs per job {dict(starts)}; "
        f"{len(switched)} of 2 processes logged +switch-master"
    )


async def _produced(record: Record) -> bool:
    await trio.lowlevel.checkpoint()
    return len(record.acknowledged) == JOBS


async def _answered_at_least(record: Record, n: int) -> bool:
    await trio.lowlevel.checkpoint()
    return record.answers >= n


async def _acknowledged_at_least(record: Record, n: int) -> bool:
    await trio.lowlevel.checkpoint()
    return len(record.acknowledged) >= n


async def _waiting_at_least(record: Record, base: str, n: int) -> bool:
    return await metric(record.client, base, "flowqd_api_predictions_waiting") >= n

"""The job rules of ``queue/policy.py``, run against both backends.

The Redis backend's Lua scripts take every rule from policy.py (generated
into their prelude when the backend opens), the embedded one calls it: so a
rule changed there changes in both, which the tests that change one show.
Every test is bounded by ``trio.fail_after``; the Redis backend runs on real
time, so an upper bound on a wait allows for its promotion interval.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
import trio
import trio.testing

from flowqd.jobs import CANCELLED, END, ERROR, JobStatus, Outcome, OutcomeKind
from flowqd.queue import policy
from flowqd.queue.redis.maintenance import PROMOTE_INTERVAL_S
from tests.queue.conftest import BrokerFactory
from tests.queue.helpers import claim_one, failed, spec, wait_terminal

# How late a due job may be claimed: the embedded backend on a mock clock,
# none; Redis, its promotion interval plus round trips.
REDIS_SLACK_S = PROMOTE_INTERVAL_S + 0.15


async def _first_retry_wait(broker_factory: BrokerFactory, **queue: float) -> float:
    """Seconds between a failure and the claim of its retry."""
    async with broker_factory(max_attempts=2, **queue) as broker:
        await broker.jobs.enqueue([spec()])
        claimed = await claim_one(broker)
        failed_at = trio.current_time()
        assert await broker.work.flush([], [failed(claimed)]) == [True]
        await claim_one(broker)
        return trio.current_time() - failed_at


async def test_retry_delay_stops_at_the_cap(
    open_test_broker: BrokerFactory,
    clock: trio.testing.MockClock | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A cap of a day cannot be waited for: lowered, an hour's backoff waits it.
    monkeypatch.setattr(policy, "RETRY_DELAY_CAP_S", 0.3)
    monkeypatch.setattr(policy, "jitter", lambda: 0.0)
    slack = 0.0 if clock else REDIS_SLACK_S
    with trio.fail_after(10):
        waited = await _first_retry_wait(open_test_broker, backoff_s=3600)
    assert 0.3 <= waited <= 0.3 + slack


async def test_retry_delay_cap_is_a_day() -> None:
    assert policy.retry_delay_s(1.0, 100, 0.0) == policy.RETRY_DELAY_CAP_S == 86400.0
    assert policy.retry_delay_s(1.0, 10**9, 0.0) == 86400.0  # the exponent cap: no overflow
    assert policy.retry_delay_s(1.0, 100, 0.999) <= 86400.0 * (1 + policy.JITTER_SHARE)


@pytest.mark.parametrize("draw", [0.0, 0.999999])
async def test_jitter_only_adds_and_at_most_its_share(
    open_test_broker: BrokerFactory,
    clock: trio.testing.MockClock | None,
    monkeypatch: pytest.MonkeyPatch,
    draw: float,
) -> None:
    # The lowest draw waits the plain backoff, the highest backoff * (1 + share).
    monkeypatch.setattr(policy, "jitter", lambda: draw)
    slack = 0.0 if clock else REDIS_SLACK_S
    with trio.fail_after(10):
        waited = await _first_retry_wait(open_test_broker, backoff_s=0.4)
    expected = policy.retry_delay_s(0.4, 1, draw)
    assert expected == pytest.approx(0.4 * (1 + policy.JITTER_SHARE * draw))
    # Redis counts whole milliseconds.
    assert expected - 0.001 <= waited <= 0.4 * (1 + policy.JITTER_SHARE) + slack


async def test_jitter_share_comes_from_policy(
    open_test_broker: BrokerFactory,
    clock: trio.testing.MockClock | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policy, "JITTER_SHARE", 2.0)
    monkeypatch.setattr(policy, "jitter", lambda: 0.5)
    slack = 0.0 if clock else REDIS_SLACK_S
    with trio.fail_after(10):
        waited = await _first_retry_wait(open_test_broker, backoff_s=0.2)
    assert 0.4 - 0.001 <= waited <= 0.4 + slack


async def test_stalled_job_fails_with_the_stalled_message(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_stalled=0, stalled_interval_s=0.1) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            await claim_one(broker, lock_ttl_s=0.2)
            [event] = await wait_terminal(broker, job_id)
            job = await broker.jobs.get_job(job_id)
    assert job is not None and job.status == JobStatus.FAILED
    assert job.error == {"message": policy.STALLED_MESSAGE, "node": None, "reason": "stalled"}
    assert (event.name, event.data) == ("error", {"message": policy.STALLED_MESSAGE, "node": None})


async def test_stalled_message_comes_from_policy(
    open_test_broker: BrokerFactory,
    clock: trio.testing.MockClock | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Quotes, a backslash and non-ASCII text reach the Lua prelude intact.
    message = 'stalled: "é" \\ 1'
    monkeypatch.setattr(policy, "STALLED_MESSAGE", message)
    with trio.fail_after(10):
        async with open_test_broker(max_stalled=0, stalled_interval_s=0.1) as broker:
            [job_id] = await broker.jobs.enqueue([spec()])
            await claim_one(broker, lock_ttl_s=0.2)
            [event] = await wait_terminal(broker, job_id)
            job = await broker.jobs.get_job(job_id)
    assert job is not None and job.error is not None and job.error["message"] == message
    assert event.data["message"] == message


async def test_cancelled_jobs_carry_the_cancelled_message(
    open_test_broker: BrokerFactory, clock: trio.testing.MockClock | None
) -> None:
    with trio.fail_after(10):
        async with open_test_broker(max_stalled=5, stalled_interval_s=0.1) as broker:
            queued, unnamed, by_worker, quiet, stalled = await broker.jobs.enqueue(
                [spec(n) for n in range(5)]
            )
            # Queued: the cancel ends it (an empty reason is the default one).
            await broker.jobs.cancel(queued, reason="user")
            await broker.jobs.cancel(unnamed, reason="")
            # Running: its worker reports the cancellation, with a reason or none.
            for job_id, error in ((by_worker, {"reason": "shutdown"}), (quiet, None)):
                claimed = await claim_one(broker)
                assert claimed.job.id == job_id
                outcome = Outcome(job_id, claimed.token, OutcomeKind.CANCELLED, error=error)
                assert await broker.work.flush([], [outcome]) == [True]
            # Running, then its worker gone: the stalled check ends it.
            assert (await claim_one(broker, lock_ttl_s=0.2)).job.id == stalled
            await broker.jobs.cancel(stalled, reason="gone")
            await wait_terminal(broker, stalled)
            expected = {
                queued: "user",
                unnamed: policy.DEFAULT_CANCEL_REASON,
                by_worker: "shutdown",
                quiet: policy.DEFAULT_CANCEL_REASON,
                stalled: "gone",
            }
            for job_id, reason in expected.items():
                job = await broker.jobs.get_job(job_id)
                assert job is not None and job.status == JobStatus.CANCELLED
                assert job.error == {"message": f"job cancelled: {reason}", "reason": reason}
                assert job.error == policy.cancelled_error(reason)
                events = await broker.jobs.read_events(job_id)
                assert [(e.name, e.data) for e in events] == [("cancelled", {"reason": reason})]


async def test_cancelled_message_comes_from_policy(
    open_test_broker: BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy, "CANCELLED_MESSAGE_PREFIX", "stopped: ")
    monkeypatch.setattr(policy, "DEFAULT_CANCEL_REASON", "no reason")
    with trio.fail_after(10):
        async with open_test_broker() as broker:
            [named, unnamed] = await broker.jobs.enqueue([spec(1), spec(2)])
            await broker.jobs.cancel(named, reason="user")
            claimed = await claim_one(broker)
            assert claimed.job.id == unnamed
            outcome = Outcome(unnamed, claimed.token, OutcomeKind.CANCELLED)
            assert await broker.work.flush([], [outcome]) == [True]
            jobs = [await broker.jobs.get_job(job_id) for job_id in (named, unnamed)]
    assert [job.error for job in jobs if job is not None] == [
        {"message": "stopped: user", "reason": "user"},
        {"message": "stopped: no reason", "reason": "no reason"},
    ]


def test_lua_scripts_write_no_rule_of_their_own() -> None:
    # Every state, event name, outcome code, constant and message of the job
    # rules reaches the scripts from Python (the generated prelude).
    names = {s.value for s in JobStatus} | {END, ERROR, CANCELLED} | {"c", "f", "x", "r"}
    numbers = {
        str(policy.RETRY_EXPONENT_CAP),
        repr(policy.JITTER_SHARE),
        str(round(policy.RETRY_DELAY_CAP_S * 1000)),
    }
    for script in (resources.files("flowqd.queue") / "lua").iterdir():
        code = re.sub(r"--[^\n]*", "", script.read_text(encoding="utf-8"))
        strings = set(re.findall(r"'([^']*)'", code)) | set(re.findall(r'"([^"]*)"', code))
        assert not strings & names, (script.name, strings & names)
        assert not [s for s in strings if "cancelled" in s or "stalled" in s], script.name
        assert not numbers & set(re.findall(r"\d+(?:\.\d+)?", code)), script.name

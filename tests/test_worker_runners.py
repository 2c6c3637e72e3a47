"""The worker's runners and its timeout task, on both brokers.

Jobs run in long-lived runner tasks fed from a backlog, in their runner's
cancel scope, and one task stops jobs past their timeout. These tests pin
down what that design must keep: waiting jobs never hold up each other,
no-op jobs do not cost a task each, and a job's own timeout holds even when
it starts after a job with a later deadline.
"""

from __future__ import annotations

from typing import Any

import trio

from flowqd.jobs import JobStatus
from tests import test_worker

# The worker tests' fixtures (both brokers, the in-process harness).
broker_kind = test_worker.broker_kind
harness_factory = test_worker.harness_factory


def _runner_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        own = int(task.name == "flowqd.worker.runner")
        return own + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    return walk(trio.lowlevel.current_root_task())


async def test_waiting_jobs_each_get_a_runner(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            ids = await h.enqueue("slow", 40)
            for job_id in ids:
                await h.wait_event(job_id, "node_start")
            # All 40 are sleeping at once: none waits behind another.
            assert (await h.broker.control.counts())[JobStatus.ACTIVE] == 40
            assert _runner_tasks() >= 40


async def test_no_op_jobs_do_not_cost_a_task_each(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            ids = await h.enqueue("echo", 300)
            jobs = [await h.wait_terminal(job_id) for job_id in ids]
            assert {j.status for j in jobs} == {JobStatus.COMPLETED}
            # Jobs that never wait run one after another in a runner or two
            # (and spare ones park), not in a task per job.
            assert _runner_tasks() <= 8


async def test_short_timeout_after_a_long_one_still_fires(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            # The timeout task first sleeps until the long job's deadline;
            # the short job starting later must move that wake-up earlier.
            [long_job] = await h.enqueue("slow", timeout_s=60)
            await h.wait_event(long_job, "node_start")
            [short_job] = await h.enqueue("slow", timeout_s=0.3)
            job = await h.wait_terminal(short_job)
            assert job.status == JobStatus.FAILED
            assert job.error is not None and job.error["reason"] == "timeout"
            still = await h.broker.jobs.get_job(long_job)
            assert still is not None and still.status == JobStatus.ACTIVE


async def test_stopping_one_job_leaves_its_runner_usable(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory() as h:
            [slow] = await h.enqueue("slow")
            await h.wait_event(slow, "node_start")
            await h.broker.jobs.cancel(slow)
            assert (await h.wait_terminal(slow)).status == JobStatus.CANCELLED
            # The cancelled scope was its runner's; the jobs after it run in a
            # fresh one and complete.
            ids = await h.enqueue("echo", 20)
            jobs = [await h.wait_terminal(job_id) for job_id in ids]
            assert {j.status for j in jobs} == {JobStatus.COMPLETED}

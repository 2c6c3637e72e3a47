"""Nothing a plugin returns or emits ends the worker, and nothing it writes is unbounded.

On both brokers: a node whose output or event is not JSON, or is over a
``limits.*`` size, fails its job with a message naming the problem; the
worker runs the next job; the stored job stays small. And on a real
``--role all`` process with the plugin loaded from ``plugins.paths``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio

from flowqd import Executor, NodeContext
from flowqd.config import Config
from flowqd.jobs import ERROR, EmittedEvent, Job, JobStatus, Outcome, OutcomeKind
from flowqd.queue.keys import prefix_of
from flowqd.redis import open_redis
from tests import test_worker
from tests.daemonproc import start_daemon

broker_kind = test_worker.broker_kind
harness_factory = test_worker.harness_factory


@attrs.frozen
class BadParams:
    kind: str = "set"
    size: int = 0


NOT_JSON: dict[str, tuple[Any, str]] = {
    "set": ({"items": {1, 2}}, "set at $.items"),
    "object": ([1, object()], "object at $[1]"),
    "int_key": ({"a": {1: "x"}}, "a dict key of type int (1) at $.a"),
    "big_int": ({"n": 2**70}, "int beyond 64 bits at $.n"),
    "surrogate": ({"odd key": "\ud800"}, 'str with an unpaired surrogate at $["odd key"]'),
}


async def _returns(ctx: NodeContext) -> Any:
    if ctx.params.kind == "big":
        return "x" * ctx.params.size
    return NOT_JSON[ctx.params.kind][0]


async def _emits(ctx: NodeContext) -> Any:
    if ctx.params.kind == "big":
        ctx.emit("note", "x" * ctx.params.size)
    else:
        ctx.emit("progress", {"seen": {1}})
    return "emitted"


async def _raises(ctx: NodeContext) -> Any:
    raise RuntimeError("bad \ud800 text")  # a lone surrogate: not UTF-8, not JSON


EXECUTORS = [
    Executor(type="returns", params=BadParams, run=_returns, description="returns bad data"),
    Executor(type="emits", params=BadParams, run=_emits, description="emits bad data"),
    Executor(type="raises", params=BadParams, run=_raises, description="raises odd text"),
]


def flow(flow_id: str, node_type: str, **params: Any) -> dict[str, Any]:
    return {
        "id": flow_id,
        "nodes": [{"id": "x", "type": node_type, "params": params}],
        "output": "x",
    }


async def run_one(h: test_worker.Harness, document: dict[str, Any]) -> Job:
    await h.flows.put(document)
    [job_id] = await h.enqueue(document["id"])
    return await h.wait_terminal(job_id)


async def still_works(h: test_worker.Harness) -> None:
    """The worker takes and finishes the next job."""
    [job_id] = await h.enqueue("echo")
    job = await h.wait_terminal(job_id)
    assert job.status == JobStatus.COMPLETED and job.result == "q0"


async def raw_values(config: Config) -> dict[bytes, list[bytes]]:
    """Every value under the queue's keys in Redis, by key (hash fields, stream entries...)."""
    found: dict[bytes, list[bytes]] = {}
    async with open_redis(config.redis, name="test-raw") as redis:
        cursor = b"0"
        while True:
            cursor, keys = await redis.execute(
                "SCAN", cursor, "MATCH", prefix_of(config.queue.name) + "*", "COUNT", 1000
            )
            for key in keys:
                kind = await redis.execute("TYPE", key)
                if kind == b"hash":
                    values = await redis.execute("HGETALL", key)
                elif kind == b"stream":
                    entries = await redis.execute("XRANGE", key, "-", "+")
                    values = [v for _id, fields in entries for v in fields]
                elif kind == b"string":
                    values = [await redis.execute("GET", key)]
                elif kind == b"list":
                    values = await redis.execute("LRANGE", key, 0, -1)
                elif kind == b"zset":
                    values = await redis.execute("ZRANGE", key, 0, -1)
                else:
                    values = await redis.execute("SMEMBERS", key)
                found[key] = list(values)
            if cursor in (b"0", 0):
                return found


@pytest.mark.parametrize("kind", sorted(NOT_JSON))
async def test_a_node_returning_what_is_not_json_fails_its_job_and_the_worker_goes_on(
    harness_factory: Any, kind: str
) -> None:
    with trio.fail_after(20):
        async with harness_factory(executors=EXECUTORS) as h:
            job = await run_one(h, flow("bad", "returns", kind=kind))
            assert job.status == JobStatus.FAILED
            assert job.error is not None and job.error["node"] == "x"
            assert job.error["message"] == (
                f"output is not JSON: {NOT_JSON[kind][1]}; return JSON-compatible data "
                "(dict, list, str, number, bool, null)"
            )
            [record] = job.nodes
            assert record["status"] == "ERROR" and record["output"] is None
            await still_works(h)


async def test_an_event_that_is_not_json_fails_the_node_at_emit(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory(executors=EXECUTORS) as h:
            job = await run_one(h, flow("bad", "emits"))
            assert job.status == JobStatus.FAILED and job.error is not None
            assert job.error["node"] == "x"
            assert job.error["message"].startswith(
                "emitted a 'progress' event whose data is not JSON: set at $.seen; "
            )
            names = [e.name for e in await h.broker.jobs.read_events(job.id)]
            assert "progress" not in names and names[-1] == ERROR
            await still_works(h)


async def test_an_error_message_that_is_not_utf8_is_stored_escaped(
    harness_factory: Any,
) -> None:
    with trio.fail_after(20):
        async with harness_factory(executors=EXECUTORS) as h:
            job = await run_one(h, flow("odd", "raises"))
            assert job.status == JobStatus.FAILED and job.error is not None
            assert job.error["message"] == "RuntimeError: bad \\ud800 text"
            assert "bad \\ud800 text" in job.error["traceback"]
            await still_works(h)


async def test_an_outcome_the_broker_cannot_encode_fails_only_its_job(
    harness_factory: Any,
) -> None:
    # Nothing a plugin can reach writes such an outcome any more (the runner
    # checks outputs), so this puts one in the worker's outbox as a broken
    # check would: the flusher fails that job and goes on.
    with trio.fail_after(20):
        async with harness_factory(overrides=["queue.max_attempts=3"]) as h:
            [slow] = await h.enqueue("slow")
            await h.wait_event(slow, "node_start")
            token = h.worker._held[slow].claimed.token
            h.worker._outbox.outcomes.append(
                Outcome(slow, token, OutcomeKind.COMPLETED, {"r": {1}})
            )
            h.worker._outbox.wanted.set()
            job = await h.wait_terminal(slow)
            assert job.status == JobStatus.FAILED and job.error is not None
            assert job.error["reason"] == "unstorable"
            assert job.error["message"] == (
                "the job failed because its result could not be stored: not JSON (set at $.r); "
                "a plugin returned, raised or emitted data that is not JSON-compatible"
            )
            assert job.attempts == 1  # not retried
            await still_works(h)


async def test_an_event_the_broker_cannot_encode_fails_its_running_job(
    harness_factory: Any,
) -> None:
    # Nothing a plugin can reach emits such an event any more (ctx.emit checks
    # it), so this puts one in the worker's outbox as a broken check would.
    with trio.fail_after(20):
        async with harness_factory() as h:
            [slow] = await h.enqueue("slow")
            await h.wait_event(slow, "node_start")
            h.worker._outbox.events.append(EmittedEvent(slow, "progress", {"seen": {1}}))
            h.worker._outbox.wanted.set()
            job = await h.wait_terminal(slow)
            assert job.status == JobStatus.FAILED and job.error is not None
            assert job.error["message"].startswith(
                "the job failed because its 'progress' event could not be stored: not JSON "
                "(set at $.seen)"
            )
            await still_works(h)


async def largest_stored(h: test_worker.Harness, job: Job, broker_kind: str) -> int:
    """Size of the largest value the broker holds for ``job`` (every raw key on Redis)."""
    if broker_kind == "redis":
        values = await raw_values(h.worker.config)
        return max(len(v) for vs in values.values() for v in vs)
    events = await h.broker.jobs.read_events(job.id)
    parts = [job.result, job.error, job.nodes, *(e.data for e in events)]
    return max(len(orjson.dumps(p)) for p in parts)


async def test_an_output_over_the_node_limit_fails_and_is_not_stored(
    harness_factory: Any, broker_kind: str
) -> None:
    with trio.fail_after(20):
        async with harness_factory(
            executors=EXECUTORS, overrides=["limits.max_node_output_bytes=1000"]
        ) as h:
            # Not the output node: the node limit holds for every node.
            job = await run_one(
                h,
                {
                    "id": "big",
                    "output": "e",
                    "nodes": [
                        {
                            "id": "x",
                            "type": "returns",
                            "params": {"kind": "big", "size": 5_000_000},
                        },
                        {"id": "e", "type": "echo", "inputs": {"text": "x"}},
                    ],
                },
            )
            assert job.status == JobStatus.FAILED and job.error is not None
            assert job.error["node"] == "x"
            assert job.error["message"] == (
                "output is 5,000,002 bytes of JSON, over limits.max_node_output_bytes (1000); "
                "return less, or raise the limit"
            )
            assert await largest_stored(h, job, broker_kind) < 2000
            await still_works(h)


async def test_a_result_over_the_result_limit_fails_the_job(harness_factory: Any) -> None:
    with trio.fail_after(20):
        async with harness_factory(
            executors=EXECUTORS, overrides=["limits.max_result_bytes=1000"]
        ) as h:
            # An inner node may be larger than a result may: only the result is held.
            fine = await run_one(
                h,
                {
                    "id": "inner",
                    "output": "s",
                    "nodes": [
                        {"id": "x", "type": "returns", "params": {"kind": "big", "size": 3000}},
                        {
                            "id": "s",
                            "type": "template",
                            "params": {"template": "short"},
                            "inputs": {"x": "x"},
                        },
                    ],
                },
            )
            assert fine.status == JobStatus.COMPLETED and fine.result == "short"
            job = await run_one(h, flow("big", "returns", kind="big", size=3000))
            assert job.status == JobStatus.FAILED and job.error is not None
            assert job.error["node"] == "x"
            assert job.error["message"] == (
                "output is the job's result and is 3,002 bytes of JSON, over "
                "limits.max_result_bytes (1000); return less, or raise the limit"
            )
            assert job.result is None and job.nodes[-1]["output"] is None
            events = await h.broker.jobs.read_events(job.id)
            assert max(len(orjson.dumps(e.data)) for e in events) < 1000
            await still_works(h)


async def test_an_event_over_the_event_limit_fails_the_node_at_emit(
    harness_factory: Any,
) -> None:
    with trio.fail_after(20):
        async with harness_factory(
            executors=EXECUTORS, overrides=["limits.max_event_bytes=100"]
        ) as h:
            job = await run_one(h, flow("big", "emits", kind="big", size=5000))
            assert job.status == JobStatus.FAILED and job.error is not None
            assert job.error["message"] == (
                "emitted a 'note' event of 5,002 bytes of JSON, over limits.max_event_bytes "
                "(100); emit smaller events, or raise the limit"
            )
            events = await h.broker.jobs.read_events(job.id)
            assert "note" not in [e.name for e in events]
            # Smaller events still pass.
            ok = await run_one(h, flow("small", "emits", kind="big", size=50))
            assert ok.status == JobStatus.COMPLETED
            names = [e.name for e in await h.broker.jobs.read_events(ok.id)]
            assert names.count("note") == 1


PLUGIN = textwrap.dedent("""
    import attrs
    from flowqd import Executor, hookimpl


    @attrs.frozen
    class NoParams:
        pass


    async def run(ctx):
        return {"items": {1, 2, 3}}


    @hookimpl
    def flowqd_executors():
        return [Executor(type="settle", params=NoParams, run=run, description="returns a set")]
""")


async def test_role_all_process_survives_a_plugin_returning_a_set(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "settle.py").write_text(PLUGIN)
    args = ["--role", "all", "--set", f"plugins.paths={plugins}"]
    with trio.fail_after(60):
        async with (
            start_daemon(args, cwd=str(tmp_path)) as daemon,
            httpx.AsyncClient(base_url=daemon.api, timeout=20) as client,
        ):
            for document in (flow("bad", "settle"), flow("echo", "echo")):
                put = await client.put(f"/api/v1/flows/{document['id']}", json=document)
                assert put.status_code in (200, 201), put.text
            for _ in range(2):  # the same plugin twice: the process lives through both
                bad = await client.post("/api/v1/prediction/bad", json={"question": "hi"})
                assert bad.status_code == 500, bad.text
                assert bad.json()["message"] == (
                    "node 'x' failed: output is not JSON: set at $.items; return "
                    "JSON-compatible data (dict, list, str, number, bool, null)"
                )
                good = await client.post("/api/v1/prediction/echo", json={"question": "hi"})
                assert good.status_code == 200 and good.json()["text"] == "hi", good.text
            assert daemon.process.returncode is None
            assert (await client.get(f"{daemon.health}/healthz")).status_code == 200
            assert "Traceback" not in daemon.text()

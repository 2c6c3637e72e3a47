"""Redis's instructions per job to claim and finish no-op jobs, counted by callgrind.

    .venv/bin/python bench/redis_cost.py [--jobs 20000] [--batch 50] [--keep 10000]
                                         [--redis-server PATH] [--top 0] [--save FILE]

CPU seconds on a shared machine swing 10-30% between runs (bench/drain.py);
instructions do not: run twice, the counts here agree within a fraction of
a percent, so a change to a script can be weighed in one run each. Starts
redis-server under ``valgrind --tool=callgrind`` (Debian's valgrind, which
brings callgrind_control), enqueues ``--jobs`` no-op jobs, then, with
instrumentation on, works through them as one worker at concurrency
``--batch`` does (bench/drain.py's target, 50): claims a batch, then flushes
it with the events and outcome a worker sends for the one-node ``echo`` flow
(started, node_start, node_end, then completed with its node record), so
the active set and the locks hold what they hold during a drain. Retention
is ``--keep``, as in bench/drain.py. Prints instructions per job (the
scripts' redis.call commands included); ``--top N`` also lists the N
functions with the most instructions (inclusive). Redis under callgrind runs
some 50 times slower: 20,000 jobs take about half a minute. Debian's
redis-server has no symbols for its static functions (Lua's among them); a
build of the same version from source (``make``) is what ``--redis-server``
is for.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowqd.config import PluginsConfig, load_config
from flowqd.flows import FlowStore
from flowqd.jobs import Claimed, EmittedEvent, JobSpec, Outcome, OutcomeKind
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import open_broker
from tests.redisproc import RedisServer

WORKER = "bench:1:cost"


def callgrind_control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def worker_flush(batch: list[Claimed], now: float) -> tuple[list[EmittedEvent], list[Outcome]]:
    """What a worker sends for these jobs of the echo flow (worker/core.py)."""
    events, outcomes = [], []
    for claimed in batch:
        job_id, q = claimed.job.id, claimed.job.inputs["question"]
        node = {"node": "e", "type": "echo", "label": "e"}
        events += [
            EmittedEvent(job_id, "started", {"attempt": 1, "worker": WORKER}),
            EmittedEvent(job_id, "node_start", node),
            EmittedEvent(job_id, "node_end", {**node, "status": "FINISHED", "output": q}),
        ]
        record = {
            "nodeId": "e",
            "nodeLabel": "e",
            "type": "echo",
            "status": "FINISHED",
            "input": {},
            "output": q,
            "previousNodeIds": [],
            "startedAt": now,
            "finishedAt": now,
        }
        outcomes.append(
            Outcome(job_id, claimed.token, OutcomeKind.COMPLETED, result=q, nodes=[record])
        )
    return events, outcomes


async def run(url: str, pid: int, jobs: int, batch: int, keep: int) -> None:
    env = {"REDIS_URL": url, "QUEUE_NAME": "bench-cost", "REMOVE_ON_COUNT": str(keep)}
    # Redis under callgrind answers a script call in tens of ms.
    config = load_config(environ=env, overrides=["redis.command_timeout_s=300"])
    async with open_broker(config) as broker, trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        flows = FlowStore(broker.flow_documents, collect_executors(load_plugins(PluginsConfig())))
        flow_id, version = await flows.put(
            {"id": "noop", "nodes": [{"id": "e", "type": "echo"}], "output": "e"}
        )
        for start in range(0, jobs, 1000):
            specs = [
                JobSpec(flow_id, version, {"question": f"q{i}"})
                for i in range(start, min(jobs, start + 1000))
            ]
            await broker.jobs.enqueue(specs)
        done = 0
        now = time.time()
        callgrind_control(pid, "-i", "on")
        while batch_ := await broker.work.claim(WORKER, batch, lock_ttl_s=600, block_s=0):
            if not all(await broker.work.flush(*worker_flush(batch_, now))):
                raise SystemExit("a flush was refused")
            done += len(batch_)
        callgrind_control(pid, "-i", "off")
        callgrind_control(pid, "-d")
        if done != jobs:
            raise SystemExit(f"claimed and finished {done} of {jobs} jobs")
        nursery.cancel_scope.cancel()


def annotate(path: Path) -> str:
    return subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def total(text: str) -> int:
    match = re.search(r"^\s*([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text, re.M)
    if match is None:
        raise SystemExit("callgrind_annotate printed no total")
    return int(match.group(1).replace(",", ""))


def top(text: str, jobs: int, n: int) -> list[str]:
    """The N costliest functions below the event loop and the script call
    (which hold nearly all of the count)."""
    rows = []
    whole = total(text)
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", line)
        if match and "PROGRAM" not in line:
            count = int(match.group(1).replace(",", ""))
            if count > 0.6 * whole:
                continue
            name = match.group(2).rsplit(":", 1)[-1]
            rows.append(f"  {count / jobs:10,.0f}  {name}")
    return rows[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=50, help="jobs per claim and per flush")
    parser.add_argument("--keep", type=int, default=10000, help="queue.remove_on_count")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--top", type=int, default=0, help="list the N costliest functions")
    parser.add_argument("--save", type=Path, help="keep callgrind's dump here (callgrind_annotate)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="flowqd-cost-") as tmp:
        out = Path(tmp) / "callgrind.out"
        # RedisServer runs one binary: this one runs redis-server under callgrind.
        wrapper = Path(tmp) / "redis-server"
        wrapper.write_text(
            "#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no"
            f" --log-file={tmp}/valgrind.log --callgrind-out-file={out}"
            f' {args.redis_server} "$@"\n'
        )
        wrapper.chmod(0o755)
        server = RedisServer()
        server.binary = str(wrapper)
        server.start(timeout=60)
        assert server.proc is not None
        try:
            trio.run(run, server.url, server.proc.pid, args.jobs, args.batch, args.keep)
        finally:
            server.close()
        dumps = list(Path(tmp).glob("callgrind.out.*"))
        if len(dumps) != 1:
            raise SystemExit(f"expected one callgrind dump, found {len(dumps)}")
        text = annotate(dumps[0])
        if args.save:
            shutil.copyfile(dumps[0], args.save)
    print(f"instructions per job: {total(text) / args.jobs:,.0f}")
    if args.top:
        print("costliest functions, instructions per job (inclusive):")
        print("\n".join(top(text, args.jobs, args.top)))


if __name__ == "__main__":
    main()

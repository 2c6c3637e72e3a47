"""Managed Redis as it is: client names, the documented ACL rule, refused commands.

A redis-server of this module's own plays a managed service: CONFIG, KEYS
and DEBUG are renamed away (as ElastiCache and Memorystore do), and flowqd
logs in as a user made with exactly the rule docs/deploy.md shows (parsed
out of it, so the two cannot drift). Real ``flowqd`` processes run on it.
"""

from __future__ import annotations

import re
import secrets
import shlex
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from flowqd.config import RedisConfig
from flowqd.errors import BrokerUnavailable, RedisCommandRefused
from flowqd.queue import client_name
from flowqd.redis import Redis, open_redis
from tests.api.test_predictions import parse_flowise_stream
from tests.daemonproc import Daemon, start_daemon
from tests.faults.helpers import ECHO, assert_no_crash, delay_flow, poll, settings, write_flows
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "docs" / "deploy.md"
ACL_SECTION = "Redis TLS and ACL"
# What managed services rename or remove; flowqd must never need them.
FORBIDDEN = ("CONFIG", "KEYS", "DEBUG")
HOST = re.sub(r"[^A-Za-z0-9._-]+", "_", socket.gethostname())


def documented_rule(password: str) -> list[str]:
    """The ``ACL SETUSER flowqd ...`` line of docs/deploy.md, as arguments."""
    lines = [line for line in DEPLOY.read_text().splitlines() if line.startswith("ACL SETUSER ")]
    assert len(lines) == 1, f"docs/deploy.md should show one ACL SETUSER rule, found {lines}"
    words = shlex.split(lines[0])
    assert ">PASSWORD" in words, words
    return [f">{password}" if word == ">PASSWORD" else word for word in words]


def without(rule: list[str], word: str) -> list[str]:
    assert word in rule, (word, rule)
    return [w for w in rule if w != word]


@pytest.fixture(scope="module")
def managed() -> Iterator[RedisServer]:
    renames = [arg for name in FORBIDDEN for arg in ("--rename-command", name, "")]
    server = RedisServer("--appendonly", "yes", *renames)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def admin(managed: RedisServer) -> AsyncIterator[Redis]:
    async with open_redis(RedisConfig(url=managed.url), name="test-admin") as redis:
        yield redis


@pytest.fixture
def user() -> tuple[str, str]:
    """A user name and password no other test uses."""
    return f"flowqd{secrets.token_hex(3)}", secrets.token_hex(16)


def user_url(server: RedisServer, user: tuple[str, str]) -> str:
    return f"redis://{user[0]}:{user[1]}@127.0.0.1:{server.port}/0"


async def set_user(admin: Redis, user: tuple[str, str], rule: list[str]) -> None:
    # The documented rule names the user "flowqd"; each test has its own.
    assert rule[:3] == ["ACL", "SETUSER", "flowqd"], rule
    await admin.execute(b"ACL", b"SETUSER", user[0], b"reset")
    await admin.execute(*rule[:2], user[0], *rule[3:])


async def acl_log(admin: Redis, name: str) -> list[dict[str, Any]]:
    entries = []
    for raw in await admin.execute(b"ACL", b"LOG", b"128"):
        entry = {raw[i].decode(): raw[i + 1] for i in range(0, len(raw), 2)}
        if entry["username"].decode() == name:
            entries.append(entry)
    return entries


async def client_list(admin: Redis) -> list[dict[str, str]]:
    """CLIENT LIST, ordinary and pub/sub connections, each as its fields."""
    clients = []
    for kind in (b"normal", b"pubsub"):
        listing = (await admin.execute(b"CLIENT", b"LIST", b"TYPE", kind)).decode()
        for line in listing.splitlines():
            clients.append(dict(part.split("=", 1) for part in line.split(" ") if "=" in part))
    return clients


async def command_calls(admin: Redis) -> dict[str, int]:
    stats = (await admin.execute(b"INFO", b"commandstats")).decode()
    return {m[1]: int(m[2]) for m in re.finditer(r"^cmdstat_(\S+?):calls=(\d+)", stats, flags=re.M)}


def test_client_name_is_role_host_and_pid_with_odd_host_names_made_safe() -> None:
    assert client_name("worker", host="web3", pid=12345) == "flowqd-worker-web3-12345"
    odd = client_name("main", host="build box\t(2)\n.example.com", pid=7)
    assert odd == "flowqd-main-build_box_2_.example.com-7"
    assert client_name("all", host="", pid=1) == "flowqd-all-unknown-1"
    assert len(client_name("main", host="h" * 300, pid=1)) == len("flowqd-main--1") + 63


async def test_main_and_worker_run_as_the_documented_acl_user(
    managed: RedisServer, admin: Redis, user: tuple[str, str], tmp_path: Path
) -> None:
    """Predictions, jobs, a cancel, an idle blocked claim ended by CLIENT UNBLOCK at
    shutdown: all as the ACL user, with nothing in ACL LOG; and CLIENT LIST names
    every connection after its process's role, host and pid."""
    await set_user(admin, user, documented_rule(user[1]))
    env = {"REDIS_URL": user_url(managed, user), "QUEUE_NAME": "acl"}
    flows = write_flows(tmp_path / "flows", [ECHO, delay_flow("slow", 30_000)])
    before = await command_calls(admin)
    with trio.fail_after(60):
        async with (
            start_daemon(
                ["--role", "main", *settings(flows__paths=flows)], env=env, cwd=str(tmp_path)
            ) as main,
            start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)) as worker,
            httpx.AsyncClient(base_url=main.api, timeout=20) as client,
        ):
            await run_jobs(client)
            await cancel_a_running_job(client)
            await check_names(admin, main, worker)
            # Idle: the worker's claim blocks (BZPOPMIN) until SIGTERM ends it.
            claim_name = f"{client_name('worker', pid=worker.process.pid)}-claim"
            await poll(lambda: is_blocked(admin, claim_name))
            worker.signal(signal.SIGTERM)
            assert await worker.wait(10) == 0, worker.text()[-3000:]
            assert_no_crash(main)
    assert await acl_log(admin, user[0]) == []
    after = await command_calls(admin)
    ran = {name for name, calls in after.items() if calls > before.get(name, 0)}
    # The paths this test means to cover did run (TIME and PUBLISH inside scripts).
    assert {"evalsha", "bzpopmin", "client|unblock", "client|setname", "client|id"} <= ran, ran
    assert {"subscribe", "xread", "time", "publish"} <= ran, ran


async def run_jobs(client: httpx.AsyncClient) -> None:
    for i in range(5):
        answer = await client.post("/api/v1/prediction/echo", json={"question": f"q{i}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == f"q{i}"
    streamed = await client.post(
        "/api/v1/prediction/echo", json={"question": "streamed", "streaming": True}
    )
    assert streamed.status_code == 200
    assert [name for name, _ in parse_flowise_stream(streamed.content)][-1] == "end"
    bulk = await client.post(
        "/api/v1/jobs",
        json={"jobs": [{"flow": "echo", "inputs": {"question": f"b{i}"}} for i in range(20)]},
    )
    assert bulk.status_code == 202, bulk.text
    for job in bulk.json()["jobs"]:
        await client.get(f"/api/v1/jobs/{job['id']}/events")  # ends after the terminal event
        done = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
        assert done["status"] == "completed", done


async def cancel_a_running_job(client: httpx.AsyncClient) -> None:
    enqueued = await client.post("/api/v1/jobs", json={"flow": "slow", "inputs": {}})
    assert enqueued.status_code == 202, enqueued.text
    job_id = enqueued.json()["id"]

    async def active() -> bool:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        return bool(job["status"] == "active")

    await poll(active)
    cancelled = await client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code in (200, 202), cancelled.text
    await client.get(f"/api/v1/jobs/{job_id}/events")
    assert (await client.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "cancelled"


async def check_names(admin: Redis, main: Daemon, worker: Daemon) -> None:
    clients = await client_list(admin)
    for role, daemon in (("main", main), ("worker", worker)):
        name = f"flowqd-{role}-{HOST}-{daemon.process.pid}"
        names = {c["name"] for c in clients if c["name"].startswith(name)}
        # The pool and the subscription carry the process's name; a worker's
        # blocking claim connection adds -claim.
        expected = {name, f"{name}-claim"} if role == "worker" else {name}
        assert names == expected, (role, names, [c["name"] for c in clients])
        assert sum(c["name"] == name for c in clients) >= 2, clients  # pool + subscription
    assert all(" " not in c["name"] for c in clients)


async def is_blocked(admin: Redis, name: str) -> bool:
    return any(
        c["name"] == name and "b" in c["flags"] and c["cmd"] == "bzpopmin"
        for c in await client_list(admin)
    )


async def test_the_documented_rule_allows_sentinel_and_cluster_commands_and_nothing_administrative(
    admin: Redis, user: tuple[str, str]
) -> None:
    await set_user(admin, user, documented_rule(user[1]))

    async def allowed(*command: str) -> bool:
        reply = await admin.execute(b"ACL", b"DRYRUN", user[0], *command)
        return bool(reply == b"OK")

    # Sentinel (ROLE in the login), Cluster (CLUSTER SLOTS, ASKING), WAIT: not
    # run against this single server, so asked of the ACL instead.
    for command in (["ROLE"], ["CLUSTER", "SLOTS"], ["ASKING"], ["WAIT", "1", "0"]):
        assert await allowed(*command), command
    for command in (
        ["FLUSHALL"],
        ["CLIENT", "KILL", "ID", "1"],
        ["CLIENT", "LIST"],
        ["INFO"],
        ["MONITOR"],
        ["SHUTDOWN"],
        ["ACL", "LIST"],
        ["GET", "someone-else:key"],
        ["PUBLISH", "someone-else", "x"],
        ["CLUSTER", "FAILOVER"],
    ):
        assert not await allowed(*command), command


@pytest.mark.parametrize(
    ("dropped", "named"),
    [("+@scripting", "EVALSHA"), ("+client|unblock", "CLIENT"), ("+time", "inside a script")],
)
async def test_a_refused_command_is_named_with_what_to_do(
    managed: RedisServer, admin: Redis, user: tuple[str, str], dropped: str, named: str
) -> None:
    await set_user(admin, user, without(documented_rule(user[1]), dropped))
    async with open_redis(RedisConfig(url=user_url(managed, user)), name="test-refused") as redis:
        script = redis.script("return redis.call('TIME')[1]")
        with pytest.raises(RedisCommandRefused) as refused:
            if dropped == "+client|unblock":
                await redis.execute(b"CLIENT", b"UNBLOCK", b"1")
            else:
                await redis.run_script(script, ["flowqd:{acl}:x"], [])
        assert isinstance(refused.value, BrokerUnavailable)  # the API's 503, a retry
        message = str(refused.value)
        assert named in message, message
        assert f"docs/deploy.md, '{ACL_SECTION}'" in message, message
        if dropped == "+time":
            assert "ACL LOG" in message, message
        # In a pipeline too: raised, not handed back as a reply.
        if dropped == "+@scripting":
            with pytest.raises(RedisCommandRefused, match="EVALSHA"):
                await redis.pipeline([script.call(["flowqd:{acl}:x"], [])])
    assert f"## {ACL_SECTION}" in DEPLOY.read_text()


async def test_a_renamed_command_is_named(admin: Redis) -> None:
    with pytest.raises(RedisCommandRefused, match=r"refused CONFIG: ERR unknown command"):
        await admin.execute(b"CONFIG", b"GET", b"maxmemory")


def test_flowqd_never_sends_what_managed_services_forbid() -> None:
    """No CONFIG, KEYS or DEBUG in the code that speaks Redis (flowqd/redis and
    flowqd/queue, test_architecture.py holds that) nor in the Lua scripts; the
    processes above also ran on a server where they are renamed away."""
    names = "|".join(FORBIDDEN)
    python = re.compile(rf"""b?["'](?:{names})["']""")  # commands are written in capitals
    lua = re.compile(rf"""redis\.p?call\(\s*["'](?:{names})["']""", flags=re.IGNORECASE)
    found = []
    for folder in ("redis", "queue"):
        for path in sorted((REPO / "flowqd" / folder).rglob("*")):
            pattern = {".py": python, ".lua": lua}.get(path.suffix)
            if pattern is None:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


async def test_a_process_refused_a_command_says_so_and_recovers_once_allowed(
    managed: RedisServer, admin: Redis, user: tuple[str, str], tmp_path: Path
) -> None:
    rule = documented_rule(user[1])
    await set_user(admin, user, without(rule, "+@scripting"))
    env = {"REDIS_URL": user_url(managed, user), "QUEUE_NAME": "refused"}
    with trio.fail_after(60):
        async with (
            start_daemon(["--role", "main"], env=env, cwd=str(tmp_path)) as main,
            start_daemon(["--role", "worker"], env=env, cwd=str(tmp_path)) as worker,
            httpx.AsyncClient(timeout=10) as client,
        ):
            stored = await client.put(f"{main.api}/api/v1/flows/echo", json=ECHO)
            assert stored.status_code == 503, stored.text
            assert "refused EVALSHA" in stored.json()["message"], stored.text
            assert ACL_SECTION in stored.json()["message"], stored.text
            await worker.wait_for_log("refused EVALSHA")
            ready = await client.get(f"{worker.health}/readyz")
            assert ready.status_code == 503 and "refused EVALSHA" in ready.text, ready.text
            # Fixed on the server: both go on without a restart.
            await set_user(admin, user, rule)

            async def worker_ready() -> bool:
                return (await client.get(f"{worker.health}/readyz")).status_code == 200

            await poll(worker_ready)
            stored = await client.put(f"{main.api}/api/v1/flows/echo", json=ECHO)
            assert stored.status_code in (200, 201), stored.text
            answer = await client.post(
                f"{main.api}/api/v1/prediction/echo", json={"question": "ok"}
            )
            assert answer.status_code == 200 and answer.json()["text"] == "ok", answer.text
            assert_no_crash(main, worker)


async def test_readonly_behind_one_endpoint_drops_the_pooled_connections(
    managed: RedisServer,
) -> None:
    """A managed service's primary endpoint is a DNS name moved on failover; the
    old primary, now a replica, answers READONLY on the connections still open
    to it. They are closed, so the next command connects (and resolves) again."""
    demoted = RedisServer()
    demoted.start()
    try:
        async with open_redis(RedisConfig(url=demoted.url), name="test-readonly") as redis:
            await redis.execute(b"SET", b"flowqd:{ro}:x", b"1")
            assert redis.statistics().open_connections == 1
            await redis.execute(b"REPLICAOF", b"127.0.0.1", str(managed.port))
            with pytest.raises(BrokerUnavailable, match="not the primary any more"):
                await redis.execute(b"SET", b"flowqd:{ro}:x", b"2")
            assert redis.statistics().open_connections == 0
    finally:
        demoted.close()

"""An API served on a real loopback socket, with a real broker and worker in the test's nursery.

Rules (as for every network test here): loopback, port 0, ``trio.fail_after``
around I/O, no sleeps standing in for synchronisation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import orjson
import trio
from quart_trio import QuartTrio

from flowqd import Executor, NodeContext, NodeError
from flowqd.api.app import ApiContext, create_app
from flowqd.api.context import QueueRoles
from flowqd.auth import KeyEntry, KeyRing, hash_key
from flowqd.config import Config, PluginsConfig, load_config
from flowqd.credentials import CredentialStore, Sealer
from flowqd.flows import FlowStore
from flowqd.metrics import Registry
from flowqd.plugins import collect_executors, load_plugins
from flowqd.queue import open_brokers
from flowqd.queue.base import Broker, Brokers
from flowqd.serve import serve_asgi
from flowqd.worker import Worker, WorkerMetrics, WorkerPools

ADMIN_KEY = "fqd_admin-key-for-tests"
ALICE_KEY = "fqd_alice-key-for-tests"
BOB_KEY = "fqd_bob-key-for-tests"


@attrs.frozen
class NoParams:
    pass


@attrs.frozen
class BoomParams:
    message: str = "boom"


async def _boom(ctx: NodeContext) -> Any:
    raise NodeError(ctx.params.message)


async def _tokens(ctx: NodeContext) -> Any:
    parts = ["Hel", "lo ", str(ctx.flow_inputs.get("question", ""))]
    for part in parts:
        ctx.emit("token", part)
    return "".join(parts)


async def _secret_length(ctx: NodeContext) -> Any:
    # Proves the worker opened the credential without ever putting it in an output.
    return len(await ctx.credential("api-token"))


@attrs.frozen
class ProgressParams:
    hold_s: float = 0.0


async def _progress(ctx: NodeContext) -> Any:
    # Reports half-way, runs on for hold_s (a client looks meanwhile), reports the end.
    ctx.progress(0.5)
    await trio.sleep(ctx.params.hold_s)
    ctx.progress({"done": 2, "of": 2})
    return "done"


TEST_EXECUTORS = [
    Executor(type="boom", params=BoomParams, run=_boom, description="always fails"),
    Executor(type="tokens", params=NoParams, run=_tokens, description="streams three tokens"),
    Executor(
        type="secret_length",
        params=NoParams,
        run=_secret_length,
        description="length of credential api-token",
    ),
    Executor(type="progress", params=ProgressParams, run=_progress, description="reports progress"),
]

FLOWS: list[dict[str, Any]] = [
    {
        "id": "echo",
        "nodes": [{"id": "customFunctionAgentflow_0", "type": "echo", "label": "Echo"}],
        "output": "customFunctionAgentflow_0",
    },
    {
        "id": "greet",
        "nodes": [
            {"id": "start", "type": "echo", "label": "Start", "inputs": {"q": "$question"}},
            {
                "id": "hello",
                "type": "template",
                "label": "Hello",
                "params": {"template": "Hello {q}"},
                "inputs": {"q": "start"},
            },
        ],
        "output": "hello",
    },
    {"id": "tokens", "nodes": [{"id": "llm", "type": "tokens", "label": "LLM"}], "output": "llm"},
    {
        "id": "boom",
        "nodes": [{"id": "b", "type": "boom", "label": "Boom", "params": {"message": "kaput"}}],
        "output": "b",
    },
    {
        "id": "slow",
        "nodes": [{"id": "d", "type": "delay", "params": {"ms": 60_000}}],
        "output": "d",
    },
    {"id": "short", "nodes": [{"id": "d", "type": "delay", "params": {"ms": 700}}], "output": "d"},
    {"id": "secret", "nodes": [{"id": "s", "type": "secret_length"}], "output": "s"},
    {
        "id": "progress",
        "nodes": [{"id": "p", "type": "progress", "params": {"hold_s": 3}}],
        "output": "p",
        "priority": 7,
    },
    {
        "id": "topic",
        "nodes": [
            {
                "id": "t",
                "type": "template",
                "params": {"template": "{topic}"},
                "inputs": {"topic": "$topic"},
            }
        ],
        "output": "t",
    },
]


def keyring(*, allow_anonymous: bool = False) -> KeyRing:
    return KeyRing(
        [
            KeyEntry("admin", hash_key(ADMIN_KEY), True),
            KeyEntry("alice", hash_key(ALICE_KEY), False),
            KeyEntry("bob", hash_key(BOB_KEY), False),
        ],
        allow_anonymous=allow_anonymous,
    )


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@attrs.define(eq=False)
class Api:
    url: str
    client: httpx.AsyncClient
    broker: Broker
    context: ApiContext
    config: Config
    shutdown: trio.Event
    worker: Worker | None
    app: QuartTrio
    # Every queue's broker ([queues.NAME] in the overrides); the worker's pools when
    # it has several (``worker`` is then the first pool's).
    brokers: Brokers | None = None
    pools: WorkerPools | None = None


def make_config(*overrides: str, environ: dict[str, str] | None = None) -> Config:
    base = ["worker.shutdown_grace_s=1", "worker.stalled_interval_s=1", "server.port=0"]
    return load_config(environ=environ or {}, overrides=[*base, *overrides])


@asynccontextmanager
async def open_api(
    *overrides: str,
    keys: KeyRing | None = None,
    worker: bool = True,
    environ: dict[str, str] | None = None,
    worker_secret: str = "shared-test-secret",
    flows: Sequence[dict[str, Any]] = FLOWS,
    graceful_s: float = 2.0,
) -> AsyncIterator[Api]:
    """Broker, worker and API server in one nursery; yields once all are ready."""
    config = make_config(*overrides, environ=environ)
    executors = collect_executors(load_plugins(PluginsConfig()))
    executors.update({e.type: e for e in TEST_EXECUTORS})
    async with open_brokers(config) as brokers, trio.open_nursery() as outer:
        broker = brokers.default
        for each in brokers.by_queue.values():
            await outer.start(each.run)
        store = FlowStore(
            broker.flow_documents,
            executors,
            max_nodes=config.flows.max_nodes,
            queues=config.queue_names,
        )
        for doc in flows:
            await store.put(doc)
        registry = Registry()
        credentials = CredentialStore(broker.secrets, Sealer("shared-test-secret"))
        shutdown = trio.Event()
        context = ApiContext(
            config,
            broker.jobs,
            broker.control,
            broker.limiter,
            store,
            credentials,
            registry,
            broker.conversations,
            queues={n: QueueRoles(b.jobs, b.control) for n, b in brokers.by_queue.items()},
            queue_conversations={n: b.conversations for n, b in brokers.by_queue.items()},
            shutdown=shutdown,
            schedules=broker.schedules,
            keys=keys if keys is not None else KeyRing.from_config(config),
        )
        app = create_app(context)
        w = pools = None
        async with trio.open_nursery() as roles:
            if worker and config.worker.queues:
                worker_credentials = CredentialStore(broker.secrets, Sealer(worker_secret))
                pools = WorkerPools.create(
                    brokers,
                    store,
                    config,
                    registry,
                    credential=worker_credentials.get,
                    broker_ok=True,
                )
                w = pools.workers[0]
                await roles.start(pools.run, shutdown)
            elif worker:
                worker_credentials = CredentialStore(broker.secrets, Sealer(worker_secret))
                w = Worker(
                    broker.work,
                    store,
                    config,
                    WorkerMetrics(registry),
                    credential=worker_credentials.get,
                )
                await roles.start(w.run, shutdown)
            binds = await roles.start(
                partial(
                    serve_asgi,
                    app,
                    "127.0.0.1",
                    0,
                    shutdown_trigger=shutdown.wait,
                    graceful_timeout_s=graceful_s,
                )
            )
            async with httpx.AsyncClient(base_url=binds[0], timeout=10) as client:
                yield Api(
                    binds[0], client, broker, context, config, shutdown, w, app, brokers, pools
                )
            shutdown.set()
        outer.cancel_scope.cancel()


@asynccontextmanager
async def raw_request(
    base_url: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> AsyncIterator[trio.SocketStream]:
    """A request over a raw socket; leaving the block drops the connection (a client that
    goes away mid-answer, which httpx cannot do without leaking its generators)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        yield stream


def raw_post(
    base_url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> AbstractAsyncContextManager[trio.SocketStream]:
    return raw_request(
        base_url,
        "POST",
        path,
        orjson.dumps(body),
        {"Content-Type": "application/json", **(headers or {})},
    )


async def post_and_leave(base_url: str, path: str, body: dict[str, Any]) -> bytes:
    """POST a streaming prediction, read until its first event, then drop the connection."""
    async with raw_post(base_url, path, body) as stream:
        received = b""
        while b"data:" not in received:
            chunk = await stream.receive_some(65536)
            assert chunk, received
            received += chunk
    return received

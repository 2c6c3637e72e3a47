"""Wires the roles into one nursery per process: the only role-aware module.

Two nested nurseries: ``infra`` holds what every role leans on (the broker's
background work, the health server, the signal watcher); ``roles`` holds the
API server and the worker. A first SIGTERM/SIGINT sets ``shutdown`` and puts
a deadline on ``roles``; when the roles have drained, ``infra`` is cancelled.
A second signal cancels everything at once.
"""

from __future__ import annotations

import errno
import logging
import math
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from functools import partial
from typing import Any

import attrs
import trio

from flowqd import tracing
from flowqd.api.app import ApiContext, create_app
from flowqd.api.context import QueueRoles
from flowqd.api_processes import (
    child_command,
    parent_of_this_process,
    run_api_processes,
    watch_parent,
)
from flowqd.backoff import Backoff
from flowqd.config import Config
from flowqd.credentials import CredentialStore, Sealer, load_secret
from flowqd.errors import (
    BrokerUnavailable,
    ConfigError,
    FlowValidationError,
    PluginError,
    ProcessError,
)
from flowqd.flows import FlowStore
from flowqd.health import HealthApp
from flowqd.logs import LOG_EVERY_S, FlushWhenIdle, ThrottledLog, flush_logs, setup_logging
from flowqd.metrics import Registry
from flowqd.metrics_share import child_env, run_metrics_share
from flowqd.notify import Notifier
from flowqd.plugins import collect_executors, load_plugins
from flowqd.process_metrics import add_process_metrics
from flowqd.queue import open_brokers
from flowqd.queue.base import Brokers
from flowqd.queue.roles import Schedules
from flowqd.schedules import Schedule, Scheduler, read_schedule_files, store_schedules
from flowqd.serve import bound_port, serve_asgi
from flowqd.worker import WorkerPools

log = logging.getLogger("flowqd")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Beyond the drain grace, how long the HTTP server and final writes may take.
TEARDOWN_MARGIN_S = 5.0
STARTUP_ERRORS = (ConfigError, PluginError, FlowValidationError)
# How long the broker may take to answer a PING at start before start-up says
# it is unreachable (and the worker's /readyz, which asks the same, says 503).
BROKER_PROBE_S = 1.0
# How often a main asks the broker whether it answers, to log when it does not.
BROKER_WATCH_EVERY_S = 1.0


@attrs.define(eq=False)
class Lifecycle:
    """What the signal watcher needs to stop the daemon."""

    grace_s: float
    shutdown: trio.Event = attrs.Factory(trio.Event)
    roles_scope: trio.CancelScope | None = None
    forced_by: int | None = None  # the signal that forced an immediate exit
    notifier: Notifier = attrs.Factory(Notifier)  # systemd; does nothing unless given one

    def begin_shutdown(self) -> None:
        if self.shutdown.is_set():
            return
        self.shutdown.set()
        self.notifier.stopping(f"draining (grace {self.grace_s:g}s)")
        if self.roles_scope is not None:
            self.roles_scope.deadline = trio.current_time() + self.grace_s + TEARDOWN_MARGIN_S


def run(config: Config, argv: Sequence[str] = ()) -> int:
    """Run the daemon until stopped; return the process exit code.

    ``argv`` is the command line it was started with (without the program),
    for the extra API processes of ``server.processes``.
    """
    setup_logging(config.log)
    tracing.setup(config.role)  # only if the OTEL_* variables ask for traces
    code = 1
    try:
        code = trio.run(_main, config, argv, instruments=[FlushWhenIdle()])
    except* STARTUP_ERRORS as group:
        for exc in _leaves(group):
            for line in str(exc).splitlines():
                log.error("cannot start: %s", line)
        code = 2
    except* (OSError, ProcessError) as group:
        for exc in _leaves(group):
            log.error("cannot start: %s", exc)
        code = 1
    finally:
        # A signal arriving during interpreter teardown would kill us with
        # 143 after a clean stop; from here on signals have nothing to stop.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            tracing.shutdown()  # the spans still buffered, within tracing.FLUSH_DEADLINE_S
        finally:
            # The info lines still batched (logs.BatchingHandler), before a
            # traceback of whatever ends the process is printed after them.
            flush_logs()
    return code


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _main(config: Config, argv: Sequence[str]) -> int:
    life = Lifecycle(grace_s=config.worker.shutdown_grace_s, notifier=Notifier.from_environ())
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals, closing(life.notifier):
        async with trio.open_nursery() as root:
            root.start_soon(_watch_signals, signals, life, root.cancel_scope)
            await _serve(config, life, argv)
            root.cancel_scope.cancel()
    if life.forced_by is not None:
        log.warning("stopped at once by a second signal")
        return 128 + life.forced_by
    log.info("stopped cleanly")
    return 0


async def _watch_signals(
    signals: AsyncIterator[int], life: Lifecycle, root: trio.CancelScope
) -> None:
    async for signum in signals:
        if not life.shutdown.is_set():
            log.info(
                "%s: draining (grace %.1fs); send it again to stop at once",
                signal.Signals(signum).name,
                life.grace_s,
            )
            life.begin_shutdown()
        else:
            life.forced_by = signum
            root.cancel()
            return


@asynccontextmanager
async def _open_components(config: Config) -> AsyncIterator[tuple[Brokers, FlowStore, Registry]]:
    pm = load_plugins(config.plugins)
    executors = collect_executors(pm)
    # The API serves every queue; a worker only its pools' (and the default
    # queue's, which holds the flows and credentials).
    pools = [name for name, _ in config.worker_pools()]
    queues = config.queue_names if config.role != "worker" else pools
    async with open_brokers(config, queues) as brokers:
        flows = FlowStore(
            brokers.default.flow_documents,
            executors,
            max_nodes=config.flows.max_nodes,
            queues=config.queue_names,
        )
        registry = Registry()
        add_process_metrics(registry, config.role)
        yield brokers, flows, registry


async def _serve(config: Config, life: Lifecycle, argv: Sequence[str]) -> None:
    async with _open_components(config) as (brokers, flows, registry):
        broker = brokers.default
        secret = load_secret(config.security)
        sealer = (
            Sealer(secret)
            if secret
            else (Sealer.ephemeral() if config.broker == "memory" else None)
        )
        credentials = CredentialStore(broker.secrets, sealer)
        endpoints: dict[str, str] = {"role": config.role, "broker": config.broker}
        async with trio.open_nursery() as infra:
            if life.notifier.watchdog_interval_s is not None:
                await infra.start(life.notifier.run_watchdog)
            parent = parent_of_this_process()
            if parent is not None:
                await infra.start(watch_parent, parent, life.begin_shutdown)
            for each in brokers.by_queue.values():
                await infra.start(each.run)
            # Checked before anything is stored: a bad schedule stops start-up.
            schedules = read_schedule_files(config.flows.paths)
            await _load_flows(flows, config, life)
            if config.role in ("main", "all"):
                await _load_schedules(broker.schedules, schedules, life)
            unreachable = await _broker_problem(brokers)
            async with trio.open_nursery() as roles:
                life.roles_scope = roles.cancel_scope
                if life.shutdown.is_set():
                    life.begin_shutdown()
                worker: WorkerPools | None = None
                if config.role in ("worker", "all"):
                    worker = WorkerPools.create(
                        brokers,
                        flows,
                        config,
                        registry,
                        credential=credentials.get,
                        broker_ok=unreachable is None,
                    )
                    endpoints["health"] = await _serve_health(
                        infra, config, worker, registry, brokers
                    )
                    if len(worker.workers) > 1:
                        endpoints["queues"] = ",".join(w.queue for w in worker.workers)
                if config.role in ("main", "all"):
                    api = ApiContext(
                        config,
                        jobs=broker.jobs,
                        control=broker.control,
                        queues={
                            name: QueueRoles(b.jobs, b.control)
                            for name, b in brokers.by_queue.items()
                        },
                        limiter=broker.limiter,
                        flows=flows,
                        credentials=credentials,
                        registry=registry,
                        conversations=broker.conversations,
                        queue_conversations={
                            name: b.conversations for name, b in brokers.by_queue.items()
                        },
                        shutdown=life.shutdown,
                        schedules=broker.schedules,
                    )
                    # In infra: its directory outlives the extra API processes.
                    api.metrics.share = await infra.start(
                        run_metrics_share,
                        registry,
                        partial(api.metrics.refresh_local, broker.control),
                        config.server.processes,
                    )
                    endpoints.update(await _serve_api(roles, api, life, argv, parent is not None))
                    # Every main runs one (extra API processes are mains too): each
                    # tick is claimed atomically, so it fires one job however many run.
                    if config.schedules.enabled:
                        scheduler = Scheduler.create(
                            broker.schedules,
                            broker.jobs,
                            flows,
                            config.schedules,
                            registry,
                            {name: b.jobs for name, b in brokers.by_queue.items()},
                        )
                        await roles.start(scheduler.run, life.shutdown)
                # Claiming starts once every port is bound: a start that fails on
                # a taken port must not have claimed jobs it then abandons.
                if worker is not None:
                    await roles.start(worker.run, life.shutdown)
                ready = " ".join(f"{k}={v}" for k, v in endpoints.items())
                _announce(life, ready, unreachable, extra=parent is not None)
                if config.role == "main":
                    # A worker says so itself, once it claims again.
                    infra.start_soon(
                        _watch_broker, brokers, life, ready, unreachable, name="flowqd.watch_broker"
                    )
            infra.cancel_scope.cancel()


async def _serve_health(
    nursery: trio.Nursery, config: Config, pools: WorkerPools, registry: Registry, brokers: Brokers
) -> str:
    per_queue = pools.queue_readiness if len(pools.workers) > 1 else None
    binds = await _listen(
        nursery,
        HEALTH,
        HealthApp(pools, registry, brokers.default.control.statistics, per_queue),
        config.worker.health_host,
        config.worker.health_port,
        shutdown_trigger=trio.sleep_forever,
        graceful_timeout_s=1.0,
    )
    return binds[0]


async def _serve_api(
    nursery: trio.Nursery, api: ApiContext, life: Lifecycle, argv: Sequence[str], child: bool
) -> dict[str, str]:
    """Serve the API (and its extra processes); the endpoints for the ready line."""
    config = api.config
    processes = config.server.processes
    binds = await _listen(
        nursery,
        API,
        create_app(api),
        config.server.host,
        config.server.port,
        shutdown_trigger=life.shutdown.wait,
        graceful_timeout_s=config.worker.shutdown_grace_s,
        reuse_port=processes > 1 or child,
        server=config.server,
    )
    endpoints = {"api": binds[0]}
    if processes > 1:
        await nursery.start(
            run_api_processes,
            child_command(argv, bound_port(binds)),
            processes - 1,
            life.shutdown,
            partial(child_env, api.metrics.share),
        )
        endpoints["api_processes"] = str(processes)
    return endpoints


async def _broker_problem(brokers: Brokers) -> str | None:
    """Why the broker does not answer now, or None (each queue's: on a Redis
    Cluster the queues may live on different masters)."""
    try:
        with trio.fail_after(BROKER_PROBE_S):
            for broker in brokers.by_queue.values():
                await broker.ping()
    except BrokerUnavailable as exc:
        return str(exc)
    except trio.TooSlowError:
        return f"no answer to PING in {BROKER_PROBE_S:g}s; check Redis at redis.url / REDIS_URL"
    return None


def _announce(life: Lifecycle, ready: str, unreachable: str | None, *, extra: bool) -> None:
    """Say the process is up, and whether it can work: not "ready" while the broker is away."""
    if unreachable is not None:
        log.warning("broker unreachable: %s; waiting for it", unreachable)
        log.info("waiting for the broker: %s", ready)
        life.notifier.ready(f"waiting for the broker: {ready}")
        return
    # Only the parent says "ready:": a supervisor waits for that line.
    log.info("%s: %s", "serving as an extra API process" if extra else "ready", ready)
    life.notifier.ready(f"serving: {ready}")


async def _watch_broker(
    brokers: Brokers, life: Lifecycle, ready: str, unreachable_at_start: str | None
) -> None:
    """On main: warn while the broker does not answer (at once, then at most once a
    minute), and say when it answers again. Requests that need it answer 503 meanwhile."""
    down_since_start = unreachable_at_start is not None
    warnings: ThrottledLog | None = ThrottledLog(log) if down_since_start else None
    # Start-up has just said so: the next report comes a minute on.
    quiet_until = trio.current_time() + LOG_EVERY_S if down_since_start else -math.inf
    while True:
        problem = await _broker_problem(brokers)
        if problem is not None and trio.current_time() >= quiet_until:
            if warnings is None:
                warnings = ThrottledLog(log)  # a new outage is reported at once
            warnings.warning(
                "broker",
                "main cannot reach the broker: %s; requests that need it answer 503 until "
                "it is back",
                problem,
            )
        elif problem is None and warnings is not None:
            warnings, quiet_until = None, -math.inf
            if down_since_start:
                log.info("broker reachable: ready: %s", ready)
            else:
                log.info("broker reachable again: serving requests")
            down_since_start = False
            life.notifier.status(f"serving: {ready}")
        await trio.sleep(BROKER_WATCH_EVERY_S)


@attrs.frozen
class Listener:
    """A server of the daemon, as a start-up error names it."""

    what: str
    host_key: str
    port_key: str
    port_env: str


API = Listener("the HTTP API", "server.host", "server.port", "PORT")
HEALTH = Listener(
    "the worker's health server", "worker.health_host", "worker.health_port", "WORKER_PORT"
)


async def _listen(
    nursery: trio.Nursery, listener: Listener, app: Any, host: str, port: int, **options: Any
) -> list[str]:
    """Start serving ``app``; a socket that cannot be bound is a start-up error naming
    the address and the settings that chose it (a bare "Address already in use" names neither)."""
    try:
        binds: list[str] = await nursery.start(partial(serve_asgi, app, host, port, **options))
    except OSError as exc:
        raise ConfigError([_cannot_listen(listener, host, port, exc)]) from exc
    return binds


def _cannot_listen(listener: Listener, host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen on {f'[{host}]' if ':' in host else host}:{port} for {listener.what}"
    other = port + 1 if port < 65535 else 8080
    choose = (
        f"choose another port with {listener.port_key} in flowqd.toml, "
        f"{listener.port_env}={other} or --set {listener.port_key}={other}"
    )
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: port {port} is already in use by another process (another flowqd?); "
            f"stop it, or {choose}"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{where}: permission denied (ports below 1024 need root or "
            f"CAP_NET_BIND_SERVICE); {choose}"
        )
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return (
            f"{where}: {host!r} is not an address of this machine; set "
            f"{listener.host_key} to 127.0.0.1, 0.0.0.0 or one of its addresses"
        )
    return f"{where} ({listener.host_key} / {listener.port_key}): {exc.strerror or exc}"


async def _load_flows(flows: FlowStore, config: Config, life: Lifecycle) -> None:
    """Register the flow files of ``flows.paths``, waiting for the broker if it is down."""
    if not config.flows.paths:
        return
    backoff = Backoff(maximum=5.0)
    while not life.shutdown.is_set():
        try:
            loaded = await flows.load_paths(config.flows.paths)
        except BrokerUnavailable as exc:
            log.warning("cannot load flows yet, broker unreachable: %s", exc)
            life.notifier.status(f"waiting for the broker to load flows: {exc}")
            await backoff.wait()
        else:
            for flow_id, version in loaded:
                log.info("flow %s version %d loaded", flow_id, version)
            return


async def _load_schedules(schedules: Schedules, found: Sequence[Schedule], life: Lifecycle) -> None:
    """Store the schedules of the flow files, waiting for the broker if it is down."""
    if not found:
        return
    backoff = Backoff(maximum=5.0)
    while not life.shutdown.is_set():
        try:
            changed = await store_schedules(schedules, found)
        except BrokerUnavailable as exc:
            log.warning("cannot store schedules yet, broker unreachable: %s", exc)
            await backoff.wait()
        else:
            for schedule_id in changed:
                log.info("schedule %s loaded", schedule_id)
            return

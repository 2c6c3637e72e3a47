"""A Redis Sentinel topology of real processes on free loopback ports.

One primary, one replica (``--replicaof``) and three ``redis-server <conf>
--sentinel`` monitoring them with quorum 2 and ``down-after-milliseconds``
1000, so a killed primary is replaced in a few seconds. The sentinels ask for
a password (as production ones should), and know each other's. Which node is
the primary changes as tests fail it over: ask ``primary()``, never assume.
Readiness is polled (PING, INFO replication, what every sentinel sees), never
slept.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
import trio

from flowqd.redis._script import pack_command
from tests.redisproc import RedisServer, free_port, redis_command, redis_commands

MASTER = "mymaster"
SENTINEL_PASSWORD = "sentinel-secret"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
# The data nodes' own settings: a replica's sync starts at once (not after 5 s),
# and nothing is persisted (a restarted node syncs from the primary).
_NODE_ARGS = ("--repl-diskless-sync-delay", "0", "--appendonly", "no")


def _fields(info: bytes) -> dict[str, str]:
    pairs = (line.partition(":") for line in info.decode().splitlines() if ":" in line)
    return {key: value for key, _, value in pairs}


def _pairs(reply: list[Any]) -> dict[str, str]:
    """A SENTINEL MASTER / REPLICAS entry (a flat key, value list) as a dict."""
    items = [bytes(x).decode() for x in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


def sentinel_command(port: int, *args: str | int, password: str | None = SENTINEL_PASSWORD) -> Any:
    """One command to the sentinel on ``port`` (logging in first); the reply as
    hiredis parses it, error replies as ``hiredis.ReplyError`` values."""
    reader = hiredis.Reader()
    commands = [("AUTH", password)] if password else []
    commands.append(args)  # type: ignore[arg-type]
    replies: list[Any] = []
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(b"".join(pack_command(c) for c in commands))
        while len(replies) < len(commands):
            reply = reader.gets()
            if reply is not False:
                replies.append(reply)
                continue
            data = s.recv(65536)
            if not data:
                raise ConnectionError(f"the sentinel on port {port} closed the connection")
            reader.feed(data)
    return replies[-1]


class SentinelProcess:
    """One ``redis-server sentinel.conf --sentinel``; its config file is its own
    (Sentinel rewrites it with what it learns)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="flowqd-sentinel-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, primary: int) -> None:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f'dir "{self.dir}"',
            f'logfile "{self.dir / "sentinel.log"}"',
            f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2",
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER} 1",
        ]
        (self.dir / "sentinel.conf").write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install it (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, str(self.dir / "sentinel.conf"), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sentinel exited: {self.log()[-2000:]}")
            try:
                if sentinel_command(self.port, "PING") == b"PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sentinel did not answer on port {self.port}")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.dir / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelTopology:
    """Two data nodes (one primary, one replica) and three sentinels."""

    def __init__(self) -> None:
        self.nodes = [RedisServer(*_NODE_ARGS), RedisServer(*_NODE_ARGS)]
        self.sentinels = [SentinelProcess() for _ in range(3)]

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def start(self, timeout: float = 30.0) -> None:
        try:
            self.build(timeout)
        except BaseException:
            self.close()
            raise

    def build(self, timeout: float = 30.0) -> None:
        """(Re)start everything from scratch: the first node the primary, the
        second its replica, fresh sentinel configs; wait until healthy."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.stop()
        first, second = self.nodes
        first.extra_args = _NODE_ARGS
        second.extra_args = (*_NODE_ARGS, "--replicaof", "127.0.0.1", str(first.port))
        first.start()
        second.start()
        for sentinel in self.sentinels:
            sentinel.write_config(first.port)
            sentinel.start()
        self.wait_healthy(timeout)

    # ---- what the processes say -------------------------------------------

    def primary(self) -> int:
        """The primary's port, as the live sentinels agree on it (raises if they do not)."""
        answers = {self.master_of(s.port) for s in self.sentinels if s.proc is not None}
        if len(answers) != 1 or None in answers:
            raise RuntimeError(f"the sentinels disagree on the primary: {answers}")
        (port,) = answers
        assert port is not None
        return port

    def replica(self) -> int:
        primary = self.primary()
        return next(n.port for n in self.nodes if n.port != primary)

    def master_of(self, sentinel_port: int) -> int | None:
        reply = sentinel_command(sentinel_port, "SENTINEL", "get-master-addr-by-name", MASTER)
        return None if reply is None else int(reply[1])

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def problems(self) -> list[str]:
        """What keeps the topology from being healthy: both nodes up, one primary
        whose replica's link is up, and every sentinel agreeing on the primary,
        seeing its replica up and the two other sentinels, with no failover on."""
        try:
            return self._problems()
        except (OSError, KeyError, ValueError) as exc:
            return [repr(exc)]

    @staticmethod
    def _acknowledges_writes(primary: int) -> bool:
        """A write on ``primary`` is acknowledged to WAIT by its replica. After a
        diskless full sync a replica shows as online before the primary sends
        it any write (that starts with the replica's first ACK, which may come
        a second later), and until then WAIT counts it out. PUBLISH is
        replicated and makes no key."""
        replies = redis_commands(
            primary, ("PUBLISH", "sentinelproc:probe", "1"), ("WAIT", 1, 200), timeout=2.0
        )
        return bool(replies[1] == 1)

    def _problems(self) -> list[str]:
        found: list[str] = []
        live = [s for s in self.sentinels if s.proc is not None]
        primaries = {self.master_of(s.port) for s in live}
        if len(primaries) != 1 or None in primaries:
            return [f"the sentinels disagree on the primary: {primaries}"]
        (primary,) = primaries
        for node in self.nodes:
            if node.proc is None:
                return [f"node {node.port} is not running"]
            info = _fields(redis_command(node.port, "INFO", "replication"))
            if node.port == primary:
                # "online" only once the replica acknowledged the sync: before
                # that WAIT does not count it.
                if info.get("role") != "master" or "state=online" not in info.get("slave0", ""):
                    found.append(f"{node.port}: {info.get('role')}, {info.get('slave0')}")
                elif not self._acknowledges_writes(node.port):
                    found.append(f"{node.port}: its replica acknowledges no write yet")
            elif info.get("role") != "slave" or info.get("master_link_status") != "up":
                found.append(f"{node.port}: {info.get('role')} {info.get('master_link_status')}")
            elif info.get("master_port") != str(primary):
                found.append(f"{node.port}: replica of {info.get('master_port')}, not {primary}")
        for sentinel in live:
            master = _pairs(sentinel_command(sentinel.port, "SENTINEL", "MASTER", MASTER))
            replicas = sentinel_command(sentinel.port, "SENTINEL", "REPLICAS", MASTER)
            flags = [_pairs(r)["flags"] for r in replicas]
            if (
                master["flags"] != "master"
                or master["num-other-sentinels"] != "2"
                or flags != ["slave"]
            ):
                found.append(
                    f"sentinel {sentinel.port}: master {master['flags']}, "
                    f"{master['num-other-sentinels']} other sentinels, replicas {flags}"
                )
        return found

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_for(lambda: not self.problems(), timeout, lambda: f"{self.problems()}")

    # ---- faults and repairs -----------------------------------------------

    def failover(self, timeout: float = 20.0) -> int:
        """``SENTINEL FAILOVER``: the replica becomes the primary; waits until the
        topology is healthy again around it and returns its port."""
        old = self.primary()
        live = next(s for s in self.sentinels if s.proc is not None)
        reply = sentinel_command(live.port, "SENTINEL", "FAILOVER", MASTER)
        if reply != b"OK":
            raise RuntimeError(f"SENTINEL FAILOVER answered {reply!r}")
        wait_for(lambda: self._moved_from(old), timeout, lambda: "the sentinels did not switch")
        new = self.primary()
        # Sentinel turns the old primary into a replica only at its next INFO
        # poll, up to 10 s later; do it now, as Sentinel would.
        if _fields(redis_command(old, "INFO", "replication")).get("role") == "master":
            redis_command(old, "REPLICAOF", "127.0.0.1", new)
        self.wait_healthy(timeout)
        return new

    def _moved_from(self, old: int) -> bool:
        try:
            return self.primary() != old
        except (RuntimeError, OSError):
            return False

    def kill_primary(self) -> int:
        """``kill -9`` the primary; its port."""
        port = self.primary()
        self.node(port).kill()
        return port

    def restore(self, timeout: float = 30.0) -> None:
        """Healthy again after whatever a test did: a killed node restarts as a
        replica of the primary the sentinels chose; if that does not settle in
        time, everything is rebuilt from scratch."""
        try:
            for sentinel in self.sentinels:
                if sentinel.proc is None:
                    sentinel.start()  # from the config it rewrote with what it learnt
            if self.problems():
                self.heal(timeout)
        except (RuntimeError, OSError):
            self.build(timeout)

    def heal(self, timeout: float = 30.0) -> None:
        """Once the sentinels promoted the survivor, start a killed node again as
        its replica (as an orchestrator would), point a replica left on a
        ``ReplicationLink`` back at the primary, and wait until healthy."""
        self._restart_killed_nodes(timeout)
        primary = self.primary()
        for node in self.nodes:
            info = _fields(redis_command(node.port, "INFO", "replication"))
            if node.port != primary and info.get("master_port") != str(primary):
                redis_command(node.port, "REPLICAOF", "127.0.0.1", primary)
        self.wait_healthy(timeout)

    def _restart_killed_nodes(self, timeout: float) -> None:
        down = [n for n in self.nodes if n.proc is None]
        if not down:
            return
        # The survivor, once the sentinels promoted it, is the primary.
        survivor = next(n for n in self.nodes if n.proc is not None)
        wait_for(lambda: self._settled_on(survivor.port), timeout, lambda: "no failover happened")
        for node in down:
            node.extra_args = (*_NODE_ARGS, "--replicaof", "127.0.0.1", str(survivor.port))
            node.start()

    def _settled_on(self, port: int) -> bool:
        """Every live sentinel names ``port`` the primary, is connected to it
        and has no PING to it unanswered. Until then a sentinel may still judge
        the new primary down: after a switch it reconnects only on its next
        once-a-second attempt, and that wait counts against a down-after of
        1000 ms; a node restarted as a replica by then would be failed over to."""
        try:
            if self.primary() != port:
                return False
            for sentinel in self.sentinels:
                if sentinel.proc is not None:
                    master = _pairs(sentinel_command(sentinel.port, "SENTINEL", "MASTER", MASTER))
                    if master["flags"] != "master" or master["last-ping-sent"] != "0":
                        return False
        except (RuntimeError, OSError, KeyError):
            return False
        return True

    def logs(self, tail: int = 3000) -> str:
        """The end of every process's log, for a failure's message."""
        parts = [f"--- sentinel {s.port}\n{s.log()[-tail:]}" for s in self.sentinels]
        for node in self.nodes:
            path = node.dir / "redis.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- node {node.port}\n{text[-tail:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        for node in self.nodes:
            node.close()


def wait_for(
    condition: Callable[[], bool], timeout: float, describe: Callable[[], str] = lambda: ""
) -> None:
    """Poll ``condition`` (another process's state) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not reached in {timeout}s: {describe()}")
        time.sleep(0.05)


class ReplicationLink:
    """A TCP relay the replica replicates through (``REPLICAOF 127.0.0.1
    link.port``), to play a replica that falls behind: ``hold()`` stops the
    primary's stream reaching it (its acknowledgements still flow, so WAIT
    sees it lag), and ``cut()`` ends the link, dropping whatever the
    primary sent meanwhile, as a partition would."""

    def __init__(self, primary: int) -> None:
        self.primary = primary
        self.port = 0
        self.held = False
        self._scope = trio.CancelScope()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until ``cut()``."""
        with self._scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = int(listeners[0].socket.getsockname()[1])
            task_status.started()
            await trio.serve_listeners(self._relay, listeners)

    def hold(self) -> None:
        self.held = True

    def cut(self) -> None:
        """Close the listener and every relayed connection, dropping what is held."""
        self._scope.cancel()

    async def _relay(self, replica: trio.SocketStream) -> None:
        async with (
            replica,
            await trio.open_tcp_stream("127.0.0.1", self.primary) as primary,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._pipe, replica, primary, False, nursery.cancel_scope)
            nursery.start_soon(self._pipe, primary, replica, True, nursery.cancel_scope)

    async def _pipe(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        from_primary: bool,
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for chunk in source:
                if from_primary and self.held:
                    await trio.sleep_forever()  # held until the link is cut
                await sink.send_all(chunk)
        except trio.BrokenResourceError:
            pass
        scope.cancel()

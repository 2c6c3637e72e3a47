"""A real redis-server on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import hiredis

from flowqd.redis._script import pack_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Owns one redis-server process. ``restart()`` keeps the port and the data dir."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server not found: install it (apt-get install redis-server); "
                "the tests need a real Redis"
            )
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="flowqd-redis-"))
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        log = self.dir / "redis.log"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--logfile",
                str(log),
                "--daemonize",
                "no",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        # Readiness is Redis answering PING; it needs a moment after exec.
        while True:
            if self.proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_command(port: int, *args: str | bytes | int, timeout: float = 2.0) -> Any:
    """One command to the redis-server on ``port``, its reply parsed by hiredis
    (error replies come back as ``hiredis.ReplyError`` instances, not raised)."""
    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(pack_command(args))
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            data = s.recv(65536)
            if not data:
                raise ConnectionError(f"redis-server on port {port} closed the connection")
            reader.feed(data)


def redis_commands(
    port: int, *commands: tuple[str | bytes | int, ...], timeout: float = 2.0
) -> list[Any]:
    """Several commands on one connection (as redis_command), their replies in order."""
    reader = hiredis.Reader()
    replies: list[Any] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(pack_command(args) for args in commands))
        while len(replies) < len(commands):
            reply = reader.gets()
            if reply is not False:
                replies.append(reply)
                continue
            data = s.recv(65536)
            if not data:
                raise ConnectionError(f"redis-server on port {port} closed the connection")
            reader.feed(data)
    return replies


def _ok(reply: Any) -> None:
    if isinstance(reply, hiredis.ReplyError):
        raise RuntimeError(f"redis-server answered {reply}")


def _fields(info: bytes) -> dict[str, str]:
    """``INFO`` or ``CLUSTER INFO`` text as a dict."""
    pairs = (line.partition(":") for line in info.decode().splitlines() if ":" in line)
    return {key: value for key, _, value in pairs}


class RedisCluster:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each,
    one redis-server per node on free loopback ports, made by ``redis-cli --cluster
    create``. Nodes are known by port; who owns what is always asked of the cluster
    (a failover in one test moves primaries for the next)."""

    def __init__(self, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found: install it (apt-get install redis-tools)")
        self.cli = cli
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes = {
            server.port: server
            for server in (
                RedisServer(
                    "--cluster-enabled",
                    "yes",
                    # Relative to the node's own --dir: one nodes.conf per node.
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(node_timeout_ms),
                    "--appendonly",
                    "no",
                    # A replica's first sync starts at once, not after 5 s.
                    "--repl-diskless-sync-delay",
                    "0",
                    # The bus port, chosen free too (port + 10000 may be taken or
                    # past 65535 for the high ports the kernel hands out).
                    "--cluster-port",
                    str(free_port()),
                )
                for _ in range(primaries * (1 + replicas))
            )
        }

    @property
    def url(self) -> str:
        """The seed URL: any live node will do, the client finds the rest."""
        return f"redis://127.0.0.1:{self.live_ports()[0]}/0"

    def live_ports(self) -> list[int]:
        return [port for port, server in self.nodes.items() if server.proc is not None]

    def start(self, timeout: float = 30.0) -> None:
        try:
            for server in self.nodes.values():
                server.start()
            create = subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            if create.returncode != 0:
                raise RuntimeError(
                    "redis-cli --cluster create failed: "
                    + (create.stdout + create.stderr).decode(errors="replace")[-3000:]
                )
            self.wait_healthy(timeout)
        except BaseException:
            self.close()
            raise

    # ---- what the cluster says ------------------------------------------------

    def slot_map(self, port: int) -> dict[int, int]:
        """Slot -> primary port, as the node on ``port`` sees it (CLUSTER SLOTS)."""
        slots: dict[int, int] = {}
        for start, end, primary, *_ in redis_command(port, "CLUSTER", "SLOTS"):
            slots.update(dict.fromkeys(range(start, end + 1), int(primary[1])))
        return slots

    def key_slot(self, key: str | bytes) -> int:
        return int(redis_command(self.live_ports()[0], "CLUSTER", "KEYSLOT", key))

    def owner(self, key: str | bytes) -> int:
        """The port of the primary that owns ``key``'s slot."""
        return self.slot_map(self.live_ports()[0])[self.key_slot(key)]

    def primaries(self) -> list[int]:
        """Ports of the primaries that serve slots, in slot order."""
        slots = sorted(self.slot_map(self.live_ports()[0]).items())
        return list(dict.fromkeys(port for _, port in slots))

    def replica_of(self, primary: int) -> int:
        """The port of a live replica of the primary on ``primary``."""
        for port in self.live_ports():
            info = _fields(redis_command(port, "INFO", "replication"))
            if info.get("role") == "slave" and int(info["master_port"]) == primary:
                return port
        raise RuntimeError(f"the primary on port {primary} has no live replica")

    def node_id(self, port: int) -> str:
        return bytes(redis_command(port, "CLUSTER", "MYID")).decode()

    def url_of(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def problems(self) -> list[str]:
        """What keeps the cluster from being healthy; empty when every node is up, says
        cluster_state:ok with all slots served, agrees on the slot map, and every
        replica's link to its primary is up."""
        found: list[str] = []
        maps: dict[int, dict[int, int]] = {}
        for port in self.nodes:
            if port not in self.live_ports():
                found.append(f"{port}: not running")
                continue
            try:
                cluster = _fields(redis_command(port, "CLUSTER", "INFO"))
                info = _fields(redis_command(port, "INFO", "replication"))
                maps[port] = self.slot_map(port)
            except OSError as exc:
                found.append(f"{port}: {exc}")
                continue
            if cluster.get("cluster_state") != "ok" or cluster.get("cluster_slots_ok") != "16384":
                found.append(f"{port}: {cluster}")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                found.append(f"{port}: replica link {info.get('master_link_status')}")
        if len({tuple(sorted(m.items())) for m in maps.values()}) > 1:
            found.append("the nodes disagree on who owns which slot")
        return found

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while problems := self.problems():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster is not healthy after {timeout}s: {problems}")
            time.sleep(0.05)

    # ---- faults -------------------------------------------------------------

    def failover(self, primary: int, timeout: float = 30.0) -> int:
        """Promote a replica of ``primary`` (CLUSTER FAILOVER on it, the clean way:
        it catches up first) and wait until every node agrees; the new primary's port."""
        replica = self.replica_of(primary)
        reply = redis_command(replica, "CLUSTER", "FAILOVER")
        if reply != b"OK":
            raise RuntimeError(f"CLUSTER FAILOVER on {replica} answered {reply!r}")
        deadline = time.monotonic() + timeout
        while primary in self.primaries() or replica not in self.primaries():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica} did not take over from {primary} in {timeout}s")
            time.sleep(0.05)
        self.wait_healthy(max(1.0, deadline - time.monotonic()))
        return replica

    def begin_migration(self, slot: int, target: int) -> int:
        """Start moving ``slot`` to the primary on ``target`` (IMPORTING there,
        MIGRATING on its owner); the owner's port. Keys move with ``migrate``."""
        source = self.slot_map(target)[slot]
        _ok(redis_command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source)))
        _ok(redis_command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target)))
        return source

    def migrate(self, slot: int, source: int, target: int, keys: list[bytes] | None = None) -> None:
        """MIGRATE ``keys`` (default: every key left in ``slot``) from source to target."""
        if keys is None:
            keys = list(redis_command(source, "CLUSTER", "GETKEYSINSLOT", slot, 100_000))
        if keys:
            reply = redis_command(
                source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys
            )
            _ok(reply)

    def finish_migration(self, slot: int, source: int, target: int, timeout: float = 10.0) -> None:
        """Move the keys left, give ``slot`` to ``target`` (the target first, so it
        claims the slot with a new epoch, then the source, then the other
        primaries) and wait until every node agrees."""
        self.migrate(slot, source, target)
        target_id = self.node_id(target)
        others = [p for p in self.primaries() if p not in (source, target)]
        for port in (target, source, *others):
            _ok(redis_command(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id))
        deadline = time.monotonic() + timeout
        while any(self.slot_map(port).get(slot) != target for port in self.live_ports()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nodes did not agree that {target} owns slot {slot}")
            time.sleep(0.02)
        self.wait_healthy(max(1.0, deadline - time.monotonic()))

    def move_slot(self, slot: int, target: int) -> int:
        """Move ``slot`` and its keys to the primary on ``target``; its old owner's port."""
        source = self.begin_migration(slot, target)
        self.finish_migration(slot, source, target)
        return source

    def kill(self, port: int) -> None:
        """``kill -9`` the node on ``port``; ``heal`` starts it again."""
        self.nodes[port].kill()

    def heal(self, timeout: float = 30.0) -> None:
        """Start every killed node again (it rejoins from its nodes.conf, a
        primary that lost its slots as a replica) and wait for health."""
        for server in self.nodes.values():
            if server.proc is None:
                server.start()
        self.wait_healthy(timeout)

    def close(self) -> None:
        for server in self.nodes.values():
            server.close()

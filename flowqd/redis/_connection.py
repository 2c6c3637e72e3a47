"""One socket to Redis: connect and log in, send packed commands, read replies.

A connection that sees an error, a timeout or a cancellation while a command
is in flight is closed at once, never reused: its reply stream is out of step,
and closing the socket is what makes Redis drop a blocked command (BLMOVE)
instead of serving it to a reader that is gone.

Plain TCP uses the socket directly (non-blocking send and recv, trio's
``wait_readable`` only when there is nothing to read yet) and opens a cancel
scope for the deadline only then: a scope per call cost about a third of a
round trip's CPU. TLS goes through ``trio.SSLStream`` with one scope per call.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import hiredis
import trio

from flowqd.errors import BrokerUnavailable, FlowqdError, RedisCommandRefused, RedisReplyError
from flowqd.redis._script import (
    Arg,
    Script,
    ScriptCall,
    is_noscript,
    pack_command,
    pack_pipeline,
    reload_request,
)
from flowqd.redis._url import Target

# Errors of the transport that mean the connection is gone.
_LOST = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, hiredis.ProtocolError)
_RECEIVE_SIZE = 65536
# Error replies that mean "not now" rather than "wrong": the command did not
# run, so callers retry it as for a lost connection.
_NOT_READY = frozenset({"LOADING", "BUSY", "MASTERDOWN"})
# The server is no longer (or not yet) the primary: find the primary again.
_MOVED_ON = frozenset({"READONLY"})
# Error replies that mean the server forbids the command for this user or at all
# (ACLs; managed services rename or remove CONFIG, KEYS, DEBUG...).
_REFUSED = ("NOPERM", "ERR unknown command", "ERR unknown subcommand")
# Redis 7.0's answer when a command inside a script is refused (it names neither).
_REFUSED_IN_SCRIPT = "ERR The user executing the script can't"


class Locator(Protocol):
    """Where the primary is now, for a topology whose primary moves (Sentinel).

    ``locate`` answers the address to connect to, asking again after
    ``moved`` was called; ``check_role`` asks each new connection to prove it
    reached a primary (a ROLE reply of ``master``).
    """

    check_role: bool

    async def locate(self, deadline: float) -> tuple[str, int]: ...

    def moved(self) -> None: ...

    @property
    def address(self) -> str: ...


_ROLE = pack_command((b"ROLE",))


class DeadlinePassed(Exception):
    """Internal: the call's deadline passed; the public method says which call."""


@attrs.define(eq=False)
class Connector:
    """What every connection of one client shares: the server, login, limits."""

    target: Target
    ssl_context: ssl.SSLContext | None
    connect_timeout: float
    command_timeout: float
    keep_alive_ms: int | None
    locator: Locator | None = None
    live: set[Connection] = attrs.Factory(set)

    @property
    def address(self) -> str:
        """The server's ``host:port``: where the locator last found the primary."""
        return self.target.address if self.locator is None else self.locator.address

    def unavailable(self, what: str, exc: BaseException | None = None) -> BrokerUnavailable:
        self.rediscover()
        detail = f": {_describe(exc)}" if exc is not None else ""
        where = (
            "redis.url / REDIS_URL, or redis.host and redis.port"
            if self.locator is None
            else "the primary the sentinels named: flowqd asks them again and follows a failover"
        )
        return BrokerUnavailable(
            f"Redis at {self.address} {what}{detail}; check that Redis runs there and "
            f"is reachable from this host ({where})"
        )

    def timed_out(self, timeout: float, stage: str) -> BrokerUnavailable:
        self.rediscover()
        return BrokerUnavailable(
            f"Redis at {self.address} did not answer within {timeout:g}s ({stage}); "
            "check that it runs, is reachable and is not overloaded "
            "(redis.command_timeout_s sets the deadline)"
        )

    def error(self, reply: RedisReplyError, command: str = "") -> FlowqdError:
        """What to raise for an error reply: itself, BrokerUnavailable if Redis
        refused because it is not ready or not the primary (the command did not
        run), or a RedisCommandRefused naming ``command`` if it is forbidden."""
        text = str(reply)
        code = text.split(" ", 1)[0]
        if code in _NOT_READY:
            return BrokerUnavailable(
                f"Redis at {self.address} is not ready ({reply}); it is starting, "
                "failing over or busy with a long script: try again shortly"
            )
        if code in _MOVED_ON:
            self.moved()
            return BrokerUnavailable(
                f"Redis at {self.address} is not the primary any more ({reply}); "
                "a failover is under way: try again shortly"
            )
        if text.startswith(_REFUSED) or text.startswith(_REFUSED_IN_SCRIPT):
            what = command or "a command"
            if text.startswith(_REFUSED_IN_SCRIPT):
                what = f"a command or key inside a script ({what}; ACL LOG on the server names it)"
            return RedisCommandRefused(
                f"Redis at {self.address} refused {what}: {reply}; flowqd needs it. Allow it "
                "for flowqd's user (the ACL rule in docs/deploy.md, 'Redis TLS and ACL'), or ask "
                "the provider whether it is renamed or disabled"
            )
        return reply

    def rediscover(self) -> None:
        """A connection failed or timed out: ask where the primary is before the
        next connect (it may have moved), keeping the connections that work."""
        if self.locator is not None:
            self.locator.moved()

    def moved(self) -> None:
        """The primary moved (READONLY, a failover notice): find it again and drop
        every connection to the old one, so nothing keeps writing there. Without
        a locator too: a managed service's endpoint is a DNS name that moves to
        the new primary, while the old one (a replica now) keeps our sockets."""
        if self.locator is not None:
            self.locator.moved()
        self.close_all()

    def close_all(self) -> None:
        for connection in list(self.live):
            connection.close()


def _describe(exc: BaseException) -> str:
    # trio wraps socket and TLS errors; the cause says what really happened.
    while isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc) or type(exc).__name__
    return text


def _hello(target: Target, name: str, *, client_id: bool) -> tuple[bytes, list[str]]:
    """The login commands, packed, with what each one checks (for the error).

    With ``client_id``, the last command is CLIENT ID (its reply is the id).
    """
    commands: list[tuple[Arg, ...]] = []
    checks: list[str] = []
    if target.password is not None or target.username is not None:
        login: tuple[Arg, ...] = (target.password or "",)
        if target.username is not None:
            login = (target.username, *login)
        commands.append((b"AUTH", *login))
        checks.append(
            "refused the login; check redis.username and redis.password "
            "(REDIS_USERNAME/REDIS_PASSWORD or the user:password part of the URL)"
        )
    if target.db:
        commands.append((b"SELECT", target.db))
        checks.append(f"refused to select database {target.db}; check redis.db (the URL's /db)")
    commands.append((b"CLIENT", b"SETNAME", name))
    checks.append("refused CLIENT SETNAME")
    if client_id:
        commands.append((b"CLIENT", b"ID"))
        checks.append("refused CLIENT ID")
    return b"".join(pack_command(c) for c in commands), checks


class Connection:
    """A connection of one's own, from ``Redis.dedicated()``, or one of the pool's.

    It connects on first use and, after a failure closed it, connects again on
    the next command, so a loop of blocking commands needs no reopening.
    One task at a time: commands on one connection run one after another.
    """

    __slots__ = (
        "_connector",
        "_fd_poll",
        "_hello",
        "_name",
        "_raw",
        "_reader",
        "_stream",
        "client_id",
        "dedicated",
    )

    def __init__(self, connector: Connector, name: str, *, dedicated: bool) -> None:
        self._connector = connector
        self._name = name
        self._hello = _hello(connector.target, name, client_id=dedicated)
        self._raw: socket.socket | None = None  # plain TCP, and the socket under TLS
        self._stream: trio.SSLStream[trio.SocketStream] | None = None  # TLS only
        self._fd_poll: Any = None
        self._reader: Any = None
        self.dedicated = dedicated
        # Redis's id for this socket (dedicated connections only), for a
        # CLIENT UNBLOCK sent from another connection; None while closed.
        self.client_id: int | None = None

    # ---- life ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._raw is not None

    def usable(self) -> bool:
        """Open, and Redis has not closed it (nothing to read while idle)."""
        if self._raw is None:
            return False
        if self._fd_poll.poll(0):
            # Readable while idle means EOF or a reset (CLIENT KILL, restart,
            # idle timeout): replace it rather than fail the next command.
            self.close()
            return False
        return True

    def close(self) -> None:
        """Close the socket now (no await: safe in cancelled code and finally)."""
        raw = self._raw
        if raw is not None:
            # Wakes a task waiting on it (ClosedResourceError) before the fd goes.
            trio.lowlevel.notify_closing(raw)
            raw.close()
        self._raw = self._stream = self._fd_poll = self._reader = None
        self.client_id = None
        self._connector.live.discard(self)

    async def connect(self, deadline: float = math.inf) -> None:
        """Open the socket, TLS, log in; BrokerUnavailable if any of it fails.

        Raises DeadlinePassed if ``deadline`` comes before the connect timeout.
        """
        self.close()
        connector = self._connector
        target = connector.target
        connect_deadline = trio.current_time() + connector.connect_timeout
        host, port = target.host, target.port
        locator = connector.locator
        try:
            with trio.CancelScope(deadline=min(deadline, connect_deadline)) as scope:
                if locator is not None:
                    host, port = await locator.locate(min(deadline, connect_deadline))
                tcp = await trio.open_tcp_stream(host, port)
                raw = socket.socket(fileno=tcp.socket.detach())  # NODELAY set by trio
                raw.setblocking(False)
                self._raw = raw
                connector.live.add(self)
                self._set_keep_alive(raw)
                if connector.ssl_context is not None:
                    transport = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
                    self._stream = trio.SSLStream(
                        transport, connector.ssl_context, server_hostname=host
                    )
                    await self._stream.do_handshake()
                self._reader = hiredis.Reader(replyError=RedisReplyError)
                self._fd_poll = select.poll()
                self._fd_poll.register(raw.fileno(), select.POLLIN)
                data, checks = self._hello
                if locator is not None and locator.check_role:
                    data, checks = data + _ROLE, [*checks, "answered ROLE with an error"]
                replies = await self._request(data, len(checks), math.inf)
        except BrokerUnavailable:
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # Closed: by another task's Connector.moved while the handshake ran.
            self.close()
            if isinstance(exc.__cause__, ssl.SSLError):
                raise BrokerUnavailable(
                    f"TLS handshake with Redis at {host}:{port} failed: {_describe(exc)}; "
                    "check redis.tls_ca (REDIS_CA), redis.tls_cert/tls_key, that the server "
                    f"certificate names {host}, and that this port speaks TLS"
                ) from exc
            raise connector.unavailable("closed the connection in the TLS handshake", exc) from exc
        except OSError as exc:
            self.close()
            raise connector.unavailable("cannot be reached", exc) from exc
        except BaseException:
            self.close()
            raise
        if scope.cancelled_caught:
            self.close()
            if deadline < connect_deadline:
                raise DeadlinePassed
            raise BrokerUnavailable(
                f"could not connect to Redis at {connector.address} within "
                f"{connector.connect_timeout:g}s (redis.connect_timeout_s); check that it runs "
                "and is reachable from this host"
                + ("; TLS is on: check that this port speaks TLS" if connector.ssl_context else "")
            )
        for reply, problem in zip(replies, checks, strict=True):
            if reply.__class__ is RedisReplyError:
                self.close()
                raise BrokerUnavailable(f"Redis at {connector.address} {problem}: {reply}")
        if locator is not None and locator.check_role:
            role = replies.pop()
            if not role or role[0] != b"master":
                self.close()
                connector.moved()
                raise BrokerUnavailable(
                    f"Redis at {host}:{port} is not a primary (ROLE says "
                    f"{role[0].decode() if role else 'nothing'}); a failover is under way"
                )
        if self.dedicated:
            self.client_id = int(replies[-1])

    def _set_keep_alive(self, raw: socket.socket) -> None:
        ms = self._connector.keep_alive_ms
        if not ms:
            return
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, ms // 1000))

    # ---- the wire ----------------------------------------------------------

    async def _request(self, data: bytes, count: int, deadline: float) -> list[Any]:
        """Send packed commands in one write, read ``count`` replies.

        Error replies are values in the list. Raises DeadlinePassed at the
        deadline and BrokerUnavailable when the connection is lost; either
        way, and on cancellation, the connection is closed.
        """
        # Both taken now: another task may close this connection at any await
        # (Connector.moved on a failover), and the socket then fails as lost.
        raw, reader = self._raw, self._reader
        try:
            if self._stream is not None:
                with trio.CancelScope(deadline=deadline) as scope:
                    return await self._stream_request(data, count)
                raise DeadlinePassed
            if raw is None:
                raise EOFError
            try:
                sent = raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                await self._send_rest(data, sent, deadline)
            # One scheduler pass: fair to other tasks, and Redis's answer has
            # usually arrived by then, so no wait (and no cancel scope).
            await trio.lowlevel.checkpoint()
            replies: list[Any] = []
            while True:
                reply = reader.gets()
                if reply is False:
                    try:
                        chunk = raw.recv(_RECEIVE_SIZE)
                    except BlockingIOError:
                        with trio.CancelScope(deadline=deadline) as scope:
                            await trio.lowlevel.wait_readable(raw)
                        if scope.cancelled_caught:
                            raise DeadlinePassed from None
                        continue
                    if not chunk:
                        raise EOFError
                    reader.feed(chunk)
                    continue
                replies.append(reply)
                if len(replies) == count:
                    return replies
        except (*_LOST, EOFError) as exc:
            self.close()
            raise self._lost(exc) from exc
        except BaseException:
            self.close()
            raise

    async def _send_rest(self, data: bytes, sent: int, deadline: float) -> None:
        raw = self._raw
        assert raw is not None
        view = memoryview(data)
        with trio.CancelScope(deadline=deadline) as scope:
            while sent < len(data):
                await trio.lowlevel.wait_writable(raw)
                with contextlib.suppress(BlockingIOError):
                    sent += raw.send(view[sent:])
        if scope.cancelled_caught:
            raise DeadlinePassed

    async def _stream_request(self, data: bytes, count: int) -> list[Any]:
        stream = self._stream
        assert stream is not None
        reader = self._reader
        replies: list[Any] = []
        await stream.send_all(data)
        while True:
            reply = reader.gets()
            if reply is False:
                chunk = await stream.receive_some(_RECEIVE_SIZE)
                if not chunk:
                    raise EOFError
                reader.feed(chunk)
                continue
            replies.append(reply)
            if len(replies) == count:
                return replies

    async def _send(self, data: bytes, deadline: float) -> None:
        """Write without reading (a pub/sub PING); closes the connection on failure."""
        try:
            if self._stream is not None:
                with trio.CancelScope(deadline=deadline) as scope:
                    await self._stream.send_all(data)
                if scope.cancelled_caught:
                    raise DeadlinePassed
            else:
                await self._send_rest(data, 0, deadline)
        except _LOST as exc:
            self.close()
            raise self._lost(exc) from exc
        except BaseException:
            self.close()
            raise

    async def _read_reply(self) -> Any:
        """Wait for one more reply without sending (pub/sub pushes).

        Unlike ``_request``, a cancelled wait keeps the connection: no
        command is in flight, the reader keeps any partial reply, and a
        cancelled receive loses no bytes.
        """
        raw = self._raw
        if raw is None:
            raise self._connector.unavailable("connection was closed after an earlier failure")
        stream = self._stream
        reader = self._reader
        try:
            reply = reader.gets()
            while reply is False:
                if stream is not None:
                    chunk = await stream.receive_some(_RECEIVE_SIZE)
                else:
                    await trio.lowlevel.wait_readable(raw)
                    try:
                        chunk = raw.recv(_RECEIVE_SIZE)
                    except BlockingIOError:
                        continue
                if not chunk:
                    raise EOFError
                reader.feed(chunk)
                reply = reader.gets()
            return reply
        except (*_LOST, EOFError) as exc:
            self.close()
            raise self._lost(exc) from exc
        except trio.Cancelled:
            raise
        except BaseException:
            self.close()
            raise

    def _lost(self, exc: BaseException) -> BrokerUnavailable:
        if isinstance(exc, EOFError):
            return self._connector.unavailable("closed the connection")
        return self._connector.unavailable("connection lost", exc)

    async def _pipeline(
        self, commands: Sequence[Sequence[Arg] | ScriptCall], deadline: float
    ) -> list[Any]:
        data, has_scripts = pack_pipeline(commands)
        replies = await self._request(data, len(commands), deadline)
        if has_scripts:
            retry = reload_request(commands, replies)
            if retry is not None:
                failed, scripts, data = retry
                again = await self._request(data, len(scripts) + len(failed), deadline)
                loads = dict(zip((id(s) for s in scripts), again, strict=False))
                for i, reply in zip(failed, again[len(scripts) :], strict=True):
                    load = loads[id(commands[i].script)]  # type: ignore[union-attr]
                    if is_noscript(reply) and load.__class__ is RedisReplyError:
                        reply = load  # the script does not compile: say why
                    replies[i] = reply
        for index, reply in enumerate(replies):
            if reply.__class__ is RedisReplyError:
                command = commands[index]
                name = "EVALSHA" if isinstance(command, ScriptCall) else command_name(command)
                error = self._connector.error(reply, name)
                if error is not reply:
                    raise error
        return replies

    async def _script(self, call: ScriptCall, deadline: float) -> Any:
        [reply] = await self._request(call.packed, 1, deadline)
        if is_noscript(reply):
            load, reply = await self._request(call.script.load_packed + call.packed, 2, deadline)
            if load.__class__ is RedisReplyError:
                reply = load
        if reply.__class__ is RedisReplyError:
            raise self._connector.error(reply, "EVALSHA")
        return reply

    # ---- public: a dedicated connection ------------------------------------

    async def _run(
        self,
        what: str,
        limit: float | None,
        operation: Callable[[Connection, Any, float], Awaitable[Any]],
        argument: Any,
    ) -> Any:
        timeout = self._connector.command_timeout if limit is None else limit
        deadline = trio.current_time() + timeout
        try:
            if not self.usable():
                await self.connect(deadline)
            return await operation(self, argument, deadline)
        except DeadlinePassed:
            raise self._connector.timed_out(timeout, f"{what} on a dedicated connection") from None

    async def execute(self, *args: Arg, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Run one command; raise RedisReplyError on an error reply.

        ``timeout=None`` means ``redis.command_timeout_s``; for a blocking
        command pass its block time plus a margin.
        """
        [reply] = await self._run(command_name(args), timeout, Connection._request_one, args)
        if reply.__class__ is RedisReplyError:
            raise self._connector.error(reply, command_name(args))
        return reply

    async def _request_one(self, args: tuple[Arg, ...], deadline: float) -> list[Any]:
        return await self._request(pack_command(args), 1, deadline)

    async def pipeline(
        self,
        commands: Sequence[Sequence[Arg] | ScriptCall],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Any]:
        """Run commands in one round trip; error replies come back as values."""
        if not commands:
            return []
        result: list[Any] = await self._run("pipeline", timeout, Connection._pipeline, commands)
        return result

    async def run_script(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Run a script by EVALSHA (loading it on NOSCRIPT)."""
        return await self._run("script", timeout, Connection._script, script.call(keys, args))


def command_name(args: Sequence[Arg]) -> str:
    if not args:
        return "command"
    name = args[0]
    return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).upper()

"""One socket to Redis: connect and log in, send packed commands, read replies.

A connection that sees an error, a timeout or a cancellation while a command
is in flight is closed at once, never reused: its reply stream is out of step,
and closing the socket is what makes Redis drop a blocked command (BLMOVE)
instead of serving it to a reader that is gone.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import attrs
import hiredis
import trio

from flowqd.errors import BrokerUnavailable, RedisReplyError
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


@attrs.define(eq=False)
class Connector:
    """What every connection of one client shares: the server, login, limits."""

    target: Target
    ssl_context: ssl.SSLContext | None
    connect_timeout: float
    command_timeout: float
    keep_alive_ms: int | None
    live: set[Connection] = attrs.Factory(set)

    def unavailable(self, what: str, exc: BaseException | None = None) -> BrokerUnavailable:
        detail = f": {_describe(exc)}" if exc is not None else ""
        return BrokerUnavailable(
            f"Redis at {self.target.address} {what}{detail}; check that Redis runs there and "
            "is reachable from this host (redis.url / REDIS_URL, or redis.host and redis.port)"
        )

    def timed_out(self, timeout: float, stage: str) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"Redis at {self.target.address} did not answer within {timeout:g}s ({stage}); "
            "check that it runs, is reachable and is not overloaded "
            "(redis.command_timeout_s sets the deadline)"
        )

    def close_all(self) -> None:
        for connection in list(self.live):
            connection.close()


def _describe(exc: BaseException) -> str:
    # trio wraps socket and TLS errors; the cause says what really happened.
    while isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc) or type(exc).__name__
    return text


def _hello(target: Target, name: str) -> tuple[bytes, list[str]]:
    """The login commands, packed, with what each one checks (for the error)."""
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
        "_reader",
        "_sock",
        "_stream",
        "dedicated",
    )

    def __init__(self, connector: Connector, name: str, *, dedicated: bool) -> None:
        self._connector = connector
        self._name = name
        self._hello = _hello(connector.target, name)
        self._stream: trio.abc.Stream | None = None
        self._sock: trio.socket.SocketType | None = None
        self._fd_poll: Any = None
        self._reader: Any = None
        self.dedicated = dedicated

    # ---- life ------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    def usable(self) -> bool:
        """Open, and Redis has not closed it (nothing to read while idle)."""
        if self._stream is None:
            return False
        if self._fd_poll.poll(0):
            # Readable while idle means EOF or a reset (CLIENT KILL, restart,
            # idle timeout): replace it rather than fail the next command.
            self.close()
            return False
        return True

    def close(self) -> None:
        """Close the socket now (no await: safe in cancelled code and finally)."""
        if self._sock is not None:
            self._sock.close()
        self._sock = self._stream = self._fd_poll = self._reader = None
        self._connector.live.discard(self)

    async def connect(self) -> None:
        """Open the socket, TLS, log in; BrokerUnavailable if any of it fails."""
        self.close()
        connector = self._connector
        target = connector.target
        try:
            with trio.fail_after(connector.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
                sock = stream.socket  # type: ignore[attr-defined]
                try:
                    self._set_keep_alive(sock)
                    if connector.ssl_context is not None:
                        stream = trio.SSLStream(
                            stream, connector.ssl_context, server_hostname=target.host
                        )
                        await stream.do_handshake()
                except BaseException:
                    sock.close()
                    raise
                self._stream, self._sock = stream, sock
                self._reader = hiredis.Reader(replyError=RedisReplyError)
                self._fd_poll = select.poll()
                self._fd_poll.register(sock.fileno(), select.POLLIN)
                connector.live.add(self)
                data, checks = self._hello
                replies = await self._many(data, len(checks))
        except trio.TooSlowError:
            self.close()
            raise BrokerUnavailable(
                f"could not connect to Redis at {target.address} within "
                f"{connector.connect_timeout:g}s (redis.connect_timeout_s); check that it runs "
                "and is reachable from this host"
                + ("; TLS is on: check that this port speaks TLS" if connector.ssl_context else "")
            ) from None
        except BrokerUnavailable:
            raise
        except trio.BrokenResourceError as exc:
            self.close()
            if isinstance(exc.__cause__, ssl.SSLError):
                raise BrokerUnavailable(
                    f"TLS handshake with Redis at {target.address} failed: {_describe(exc)}; "
                    "check redis.tls_ca (REDIS_CA), redis.tls_cert/tls_key, that the server "
                    f"certificate names {target.host}, and that this port speaks TLS"
                ) from exc
            raise connector.unavailable("closed the connection in the TLS handshake", exc) from exc
        except OSError as exc:
            self.close()
            raise connector.unavailable("cannot be reached", exc) from exc
        for reply, problem in zip(replies, checks, strict=True):
            if reply.__class__ is RedisReplyError:
                self.close()
                raise BrokerUnavailable(f"Redis at {target.address} {problem}: {reply}")

    def _set_keep_alive(self, sock: trio.socket.SocketType) -> None:
        ms = self._connector.keep_alive_ms
        if not ms:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, ms // 1000))

    # ---- the wire (callers hold the deadline) ------------------------------

    async def _one(self, data: bytes) -> Any:
        """Send one packed command, return its reply (error replies as values)."""
        stream = self._stream
        reader = self._reader
        try:
            await stream.send_all(data)  # type: ignore[union-attr]
            reply = reader.gets()
            while reply is False:
                chunk = await stream.receive_some(_RECEIVE_SIZE)  # type: ignore[union-attr]
                if not chunk:
                    raise EOFError
                reader.feed(chunk)
                reply = reader.gets()
            return reply
        except (*_LOST, EOFError) as exc:
            self.close()
            raise self._lost(exc) from exc
        except BaseException:
            self.close()
            raise

    async def _many(self, data: bytes, count: int) -> list[Any]:
        """Send packed commands in one write, read ``count`` replies."""
        stream = self._stream
        reader = self._reader
        replies: list[Any] = []
        append = replies.append
        try:
            await stream.send_all(data)  # type: ignore[union-attr]
            while True:
                reply = reader.gets()
                if reply is False:
                    chunk = await stream.receive_some(_RECEIVE_SIZE)  # type: ignore[union-attr]
                    if not chunk:
                        raise EOFError
                    reader.feed(chunk)
                    continue
                append(reply)
                if len(replies) == count:
                    return replies
        except (*_LOST, EOFError) as exc:
            self.close()
            raise self._lost(exc) from exc
        except BaseException:
            self.close()
            raise

    async def _send(self, data: bytes) -> None:
        """Write without reading (a pub/sub PING); closes the connection on failure."""
        try:
            await self._stream.send_all(data)  # type: ignore[union-attr]
        except _LOST as exc:
            self.close()
            raise self._lost(exc) from exc
        except BaseException:
            self.close()
            raise

    async def _read_reply(self) -> Any:
        """Wait for one more reply without sending (pub/sub pushes).

        Unlike the request methods, a cancelled wait keeps the connection: no
        command is in flight, the reader keeps any partial reply, and a
        cancelled receive loses no bytes.
        """
        if self._stream is None:
            raise self._connector.unavailable("connection was closed after an earlier failure")
        stream = self._stream
        reader = self._reader
        try:
            reply = reader.gets()
            while reply is False:
                chunk = await stream.receive_some(_RECEIVE_SIZE)
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

    async def _pipeline(self, commands: Sequence[Sequence[Arg] | ScriptCall]) -> list[Any]:
        data, has_scripts = pack_pipeline(commands)
        replies = await self._many(data, len(commands))
        if has_scripts:
            retry = reload_request(commands, replies)
            if retry is not None:
                failed, scripts, data = retry
                again = await self._many(data, len(scripts) + len(failed))
                loads = dict(zip((id(s) for s in scripts), again, strict=False))
                for i, reply in zip(failed, again[len(scripts) :], strict=True):
                    load = loads[id(commands[i].script)]  # type: ignore[union-attr]
                    if is_noscript(reply) and load.__class__ is RedisReplyError:
                        reply = load  # the script does not compile: say why
                    replies[i] = reply
        return replies

    async def _script(self, call: ScriptCall) -> Any:
        reply = await self._one(call.packed)
        if is_noscript(reply):
            load, reply = await self._many(call.script.load_packed + call.packed, 2)
            if load.__class__ is RedisReplyError:
                reply = load
        if reply.__class__ is RedisReplyError:
            raise reply
        return reply

    # ---- public: a dedicated connection ------------------------------------

    async def _ready(self) -> None:
        if not self.usable():
            await self.connect()

    async def execute(self, *args: Arg, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Run one command; raise RedisReplyError on an error reply.

        ``timeout=None`` means ``redis.command_timeout_s``; for a blocking
        command pass its block time plus a margin.
        """
        data = pack_command(args)
        if timeout is None:
            timeout = self._connector.command_timeout
        with trio.move_on_after(timeout):
            await self._ready()
            reply = await self._one(data)
            if reply.__class__ is RedisReplyError:
                raise reply
            return reply
        raise self._connector.timed_out(timeout, f"{command_name(args)} on a dedicated connection")

    async def pipeline(
        self,
        commands: Sequence[Sequence[Arg] | ScriptCall],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Any]:
        """Run commands in one round trip; error replies come back as values."""
        if timeout is None:
            timeout = self._connector.command_timeout
        with trio.move_on_after(timeout):
            await self._ready()
            return await self._pipeline(commands)
        raise self._connector.timed_out(timeout, "pipeline on a dedicated connection")

    async def run_script(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Run a script by EVALSHA (loading it on NOSCRIPT)."""
        call = script.call(keys, args)
        if timeout is None:
            timeout = self._connector.command_timeout
        with trio.move_on_after(timeout):
            await self._ready()
            return await self._script(call)
        raise self._connector.timed_out(timeout, "script on a dedicated connection")


def command_name(args: Sequence[Arg]) -> str:
    if not args:
        return "command"
    name = args[0]
    return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).upper()

"""Serving an ASGI app with hypercorn's HTTP/1.1 protocol inside the daemon's nursery.

flowqd runs its own accept loop around hypercorn's per-connection ``TCPServer``:
the defences of an open port live at the connection level, where hypercorn
has no hook. A connection must send a complete request head within
``server.header_timeout_s`` (counted from its first byte, so idle keep-alive
connections keep hypercorn's longer keep-alive timeout); connections past
``server.max_connections`` get a fixed 503 and are closed; a client that stops
reading an answer is cut after ``server.body_timeout_s``; and a flood is
logged once a minute per condition, never once per connection.

hypercorn's own ``read_timeout`` is no substitute: it bounds every read,
including the silence of a client waiting for a long prediction or an event
stream, and it would cut those.
"""

from __future__ import annotations

import errno
import logging
import math
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Event, RawData
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

from flowqd.config import ServerConfig
from flowqd.logs import ThrottledLog

log = logging.getLogger("flowqd.serve")

# accept() fails with these when the process or the system is out of descriptors
# or memory; the listener stays usable, so wait a little and accept again.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_BACKOFF_S = 0.1
# Descriptors kept for everything but client connections (Redis, logs, plugins).
RESERVED_FILES = 1024
# Refusals being written at once; past this, connections are closed unanswered.
MAX_REFUSING = 128
REFUSAL_LINGER_S = 1.0
# A client must accept this much of an answer within server.body_timeout_s.
SEND_PIECE = 256 * 1024


class _Server:
    """Connections of one listening socket: counts, deadlines, the drain at shutdown."""

    def __init__(
        self, app: AppWrapper, config: HyperConfig, server: ServerConfig, cap_setting: str | None
    ) -> None:
        self.app = app
        self.config = config
        self.header_timeout_s = server.header_timeout_s
        self.send_timeout_s = server.body_timeout_s
        self.max_connections = server.max_connections
        self.context = WorkerContext(None)
        self.state = ConnectionState({})
        self.connections = 0
        self.refusing = 0
        self.responses = 0  # responses begun and not yet sent in full
        self.none_owed = trio.Event()
        self.none_owed.set()
        self.log = ThrottledLog(log)
        self.refusal = _refusal(server.max_connections, cap_setting)
        # Log lines name the settings only where they apply (not the health server).
        self.cap_name = cap_setting or "a fixed limit"
        self.head_name = "server.header_timeout_s" if cap_setting else "a fixed limit"

    async def accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                self.log.warning(
                    "accept",
                    "cannot accept connections: %s (%d open); raise "
                    "the file limit (LimitNOFILE, ulimit -n) or lower "
                    "server.max_connections",
                    exc.strerror,
                    self.connections,
                )
                await trio.sleep(CAPACITY_BACKOFF_S)
                continue
            if self.connections >= self.max_connections:
                self.log.warning(
                    "cap",
                    "refusing connections with 503: %d are open, the limit (%s)",
                    self.connections,
                    self.cap_name,
                )
                if self.refusing < MAX_REFUSING:
                    self.refusing += 1
                    nursery.start_soon(self.refuse, stream)
                else:
                    await trio.aclose_forcefully(stream)
                continue
            self.connections += 1
            nursery.start_soon(self.handle, stream)

    async def handle(self, stream: trio.SocketStream) -> None:
        connection = _Connection(self, stream)
        try:
            with connection.deadline:
                # The connection stands in for both the stream and the app (see _Connection).
                await _TCPServer(
                    cast(Any, connection),
                    self.config,
                    self.context,
                    self.state,
                    cast(Any, connection),
                ).run()
            if connection.deadline.cancelled_caught and not connection.hung_up:
                self.log.warning(
                    "head",
                    "closed connections that sent no complete request head within %gs (%s)",
                    self.header_timeout_s,
                    self.head_name,
                )
        finally:
            await trio.aclose_forcefully(connection)

    async def refuse(self, stream: trio.SocketStream) -> None:
        """The fixed 503, then wait briefly for the client to close first: closing
        with its request unread would reset the connection and could lose the 503."""
        try:
            with trio.move_on_after(REFUSAL_LINGER_S):
                await stream.send_all(self.refusal)
                await stream.send_eof()
                while await stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.refusing -= 1
            await trio.aclose_forcefully(stream)

    def response_begun(self) -> None:
        self.responses += 1
        if self.responses == 1:
            self.none_owed = trio.Event()

    def response_done(self) -> None:
        self.responses -= 1
        if self.responses == 0:
            self.none_owed.set()


class _TCPServer(TCPServer):
    """hypercorn's driver of one connection, without a write of nothing per answer.

    Every answer of known length ends with h11's end of message, which is no
    bytes; hypercorn still takes its send lock and a shielded scope to write
    them. They are written only when they carry a held head out (a body of
    none: HEAD, 204), before hypercorn may close the connection.
    """

    async def protocol_send(self, event: Event) -> None:
        if (
            isinstance(event, RawData)
            and not event.data
            and not cast(_Connection, self.stream).head
        ):
            return
        await super().protocol_send(event)


class _Connection(trio.abc.HalfCloseableStream):
    """One client connection, seen by hypercorn's TCPServer as its stream and its app.

    As the stream it starts the head deadline when the first bytes of a request
    arrive; as the app it stops the deadline once hypercorn has parsed the head,
    and it counts responses owed, for the drain at shutdown: quart-trio keeps a
    request's task alive after its response until the client disconnects, so
    what matters for a clean stop is that every response went out.
    """

    __slots__ = ("closed", "deadline", "head", "holding", "hung_up", "owing", "server", "stream")

    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.deadline = trio.CancelScope(deadline=trio.current_time() + server.header_timeout_s)
        self.owing = False
        self.closed = False
        self.hung_up = False
        # A response head held back to go out in one write with its body.
        self.holding = False
        self.head = b""

    # The stream hypercorn reads and writes (it looks for ``socket`` on plain TCP).
    @property
    def socket(self) -> trio.socket.SocketType:
        return self.stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        if self.owing:
            pass
        elif not data:
            # The client hung up between requests. hypercorn would hold the socket
            # until its keep-alive timer ran out (75 s): a client that connects and
            # closes in a loop could exhaust the descriptors.
            self.hung_up = True
            self.deadline.cancel()
        elif self.deadline.deadline == math.inf:
            # The first bytes of the next request on a kept-alive connection.
            self.deadline.deadline = trio.current_time() + self.server.header_timeout_s
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.holding:
            self.head += data
            return
        if self.head:
            data, self.head = self.head + data, b""
        # hypercorn shields its writes from cancellation: without a bound a client
        # that stops reading would hold the connection, and shutdown, forever. A
        # slow reader is fine as long as each piece goes out in time.
        view = memoryview(data)
        for start in range(0, len(view), SEND_PIECE):
            with trio.move_on_after(self.server.send_timeout_s) as scope:
                await self.stream.send_all(view[start : start + SEND_PIECE])
            if scope.cancelled_caught:
                await trio.aclose_forcefully(self)
                raise trio.BrokenResourceError("the client stopped reading")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # hypercorn closes a connection that cannot be reused (Connection: close,
        # a body left unread) from the request's task, which quart-trio may be
        # cancelling at that moment; unshielded, the close would be skipped and
        # the connection left open until the client went away. This never blocks.
        self._count_out()
        with trio.CancelScope(shield=True):
            await self.stream.send_eof()

    async def aclose(self) -> None:
        self._count_out()
        await self.stream.aclose()

    def _count_out(self) -> None:
        # Before the client can see the connection end, so that its next
        # connection finds the slot free.
        if not self.closed:
            self.closed = True
            self.server.connections -= 1

    # The app hypercorn calls once a request head is complete.
    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> None:
        if scope["type"] != "http":
            await self.server.app(scope, receive, send, sync_spawn, call_soon)
            return
        self.deadline.deadline = math.inf
        self.owing = True
        self.server.response_begun()
        owed = True

        def done() -> None:
            nonlocal owed
            if owed:
                owed = False
                self.owing = False
                self.server.response_done()

        async def send_tracked(message: Any) -> None:
            if message is not None and message["type"] == "http.response.start":
                # hypercorn writes the head, the body and the end each on its own;
                # a body of known length follows its head at once, so they can
                # share one write. A stream's head goes at once: its first
                # event may be far off.
                self.holding = any(
                    name == b"content-length" for name, _ in message.get("headers", ())
                )
                try:
                    await send(message)
                finally:
                    self.holding = False
                return
            await send(message)
            if self.head:
                await self.send_all(b"")  # hypercorn wrote nothing after the head
            if (
                message is not None
                and message["type"] == "http.response.body"
                and not message.get("more_body")
            ):
                done()

        try:
            await self.server.app(scope, receive, send_tracked, sync_spawn, call_soon)
        finally:
            done()


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout_s: float,
    reuse_port: bool = False,
    server: ServerConfig | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns, then drain for ``graceful_timeout_s``.

    The drain ends as soon as every response has been sent, whatever idle
    keep-alive connections remain. Reports the bound addresses
    (``http://host:port``) through ``task_status``. With ``reuse_port``,
    other processes may bind the same port and the kernel spreads the
    connections among them (``server.processes``). ``server`` holds the
    connection limits (``server.*``); without it (the health server) the
    defaults apply and the refusal names no setting.
    """
    limits = server or ServerConfig()
    if server is not None:
        raise_file_limit(server.max_connections)
    config = _hyper_config()
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    served = _Server(wrapped, config, limits, "server.max_connections" if server else None)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    with (
        _bind(host, port, reuse_port=reuse_port) as sock,
        trio.socket.from_stdlib_socket(sock) as trio_sock,
    ):
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            served.state = ConnectionState(lifespan_state.copy())
            # Listening only once the app has started: with SO_REUSEPORT the kernel
            # then sends this process connections only when it can answer them.
            sock.listen(config.backlog)
            listener = trio.SocketListener(trio_sock)
            bound = repr_socket_addr(sock.family, sock.getsockname())
            await _serve(
                served,
                listener,
                f"http://{bound}",
                shutdown_trigger,
                graceful_timeout_s,
                task_status,
            )
            with trio.move_on_after(graceful_timeout_s):
                await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()


async def _serve(
    served: _Server,
    listener: trio.SocketListener,
    bind: str,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout_s: float,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as acceptor:
            acceptor.start_soon(served.accept, listener, connections)
            task_status.started([bind])
            await shutdown_trigger()
            acceptor.cancel_scope.cancel()
        # Idle keep-alive connections close, busy ones close after their answer.
        await served.context.terminated.set()
        with trio.move_on_after(graceful_timeout_s):
            await served.none_owed.wait()
        connections.cancel_scope.cancel()


def _hyper_config() -> HyperConfig:
    config = HyperConfig()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handlers
    # A request body is read by the app with its own limit; this only bounds headers.
    config.h11_max_incomplete_size = 64 * 1024
    # Idle time between requests; longer than the idle timeouts of common load
    # balancers (60 s), so they never send a request into a connection being closed.
    config.keep_alive_timeout = 75
    # hypercorn's default of 100 drops SYNs when thousands of clients connect
    # at once (each then waits a second for the retransmit).
    config.backlog = 2048
    return config


def bound_port(binds: list[str]) -> int:
    """The port of the first bind ``serve_asgi`` reports (useful when asked for port 0)."""
    return int(binds[0].rsplit(":", 1)[1])


def raise_file_limit(max_connections: int) -> None:
    """Lift the soft descriptor limit toward the hard one so ``max_connections`` fit.

    Warns once when even the hard limit is too low: past it, accepting fails
    and so does everything else that opens a file or a socket.
    """
    wanted = max_connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "server.max_connections = %d does not fit the file limit of this process "
            "(%d, with %d kept for Redis and files): connections past about %d will "
            "fail; raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) or "
            "lower server.max_connections",
            max_connections,
            soft,
            RESERVED_FILES,
            max(soft - RESERVED_FILES, 0),
        )


def _refusal(max_connections: int, setting: str | None) -> bytes:
    limit = f"the limit {setting}" if setting else "its limit"
    body = orjson.dumps(
        {
            "statusCode": 503,
            "success": False,
            "message": f"too many open connections: this server holds {max_connections}, "
            f"{limit}; retry shortly",
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound, not yet listening socket. With ``reuse_port``, other processes may
    bind the same port (SO_REUSEPORT) and the kernel spreads connections among them."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock

"""systemd's service notification protocol, for ``Type=notify`` units.

Messages are ``KEY=VALUE`` lines in one datagram to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace):
``READY=1`` once the daemon serves, ``STOPPING=1`` when it starts draining,
``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` from a trio task (so a stuck
loop stops the pings and systemd restarts the process), and ``STATUS=`` lines
shown by ``systemctl status``. Without ``$NOTIFY_SOCKET`` every call does
nothing. Written here rather than taken from a package: it is one datagram.

In the one-file binary, systemd's main process is PyInstaller's bootloader
and the daemon is its child, so ``$WATCHDOG_PID`` names the parent; the unit
needs ``NotifyAccess=all`` for the child's messages to count.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping

import attrs
import trio

log = logging.getLogger("flowqd.notify")


@attrs.define(eq=False)
class Notifier:
    """Sends notifications to systemd; a no-op when not started by it.

    ``address`` is the socket address (abstract names start with a NUL
    byte); ``watchdog_interval_s`` is half of ``$WATCHDOG_USEC`` when the
    watchdog applies to this process, else None.
    """

    address: str | None = None
    watchdog_interval_s: float | None = None
    _sock: socket.socket | None = attrs.field(default=None, init=False, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` ask for."""
        env = os.environ if environ is None else environ
        return cls(
            address=_socket_address(env.get("NOTIFY_SOCKET", "")),
            watchdog_interval_s=_watchdog_interval(env),
        )

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one message.

        Never blocks and never raises: a notification that cannot be sent is
        logged and dropped (systemd then times out and says so itself).
        Returns whether the message was sent.
        """
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %r: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", _status(status))

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", _status(status))

    def status(self, status: str) -> bool:
        return self.notify(_status(status))

    async def run_watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping the watchdog every ``watchdog_interval_s`` until cancelled.

        From the trio loop on purpose: if the loop stops running tasks, the
        pings stop and systemd restarts the daemon.
        """
        interval = self.watchdog_interval_s
        if interval is None:
            task_status.started()
            return
        self.notify("WATCHDOG=1")  # before start() returns: the daemon is alive from here on
        task_status.started()
        while True:
            await trio.sleep(interval)
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    # One message is newline-separated fields: an error text must stay on one line.
    return "STATUS=" + " ".join(text.split())


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # vsock:CID:PORT (systemd 254+, for VMs) and anything newer: not for a daemon on a host.
    log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    try:
        interval = int(usec) / 2 / 1_000_000
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; not pinging the watchdog", usec)
        return None
    if interval <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and not _is_watched(pid):
        return None  # set for another process (a parent that did not unset it)
    return interval


def _is_watched(pid: str) -> bool:
    try:
        watched = int(pid)
    except ValueError:
        return False
    if watched == os.getpid():
        return True
    # One-file binary: systemd watches the bootloader, our parent.
    return bool(getattr(sys, "frozen", False)) and watched == os.getppid()

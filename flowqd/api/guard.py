"""Who may talk to the API from a browser: the Host and Origin checks.

Without API keys (the default on loopback) any web page a developer opens
could otherwise drive the API. Two checks, run before authentication:

- Host (DNS rebinding): a page of evil.example whose name is made to resolve
  to 127.0.0.1 reaches the API as same-origin, but its requests carry
  ``Host: evil.example``. Only the names in ``server.allowed_hosts`` are
  answered; by default the listen address, plus the loopback names when it is
  a loopback address, and any name when it listens on every interface.
- Origin (cross-site writes): browsers send ``Origin`` on every write, and
  ``Sec-Fetch-Site`` on every request. A write (POST, PUT, PATCH, DELETE)
  from a page of another origin is refused unless ``server.allowed_origins``
  lists it. Clients other than browsers (curl, SDKs) send no Origin and pass.

JSON bodies must also say they are JSON (``read_json``): a form or
``text/plain`` body is what a page may send cross-site without asking.
"""

from __future__ import annotations

import ipaddress

import attrs

from flowqd.api.http import ApiError, Incoming
from flowqd.config import ServerConfig

__all__ = ["Guard"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": "80", "https": "443"}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
EVERY_INTERFACE = frozenset({"", "0.0.0.0", "::"})


@attrs.frozen
class Guard:
    # None: any.
    hosts: frozenset[str] | None
    origins: frozenset[str] | None

    @classmethod
    def from_config(cls, server: ServerConfig) -> Guard:
        return cls(_allowed_hosts(server), _allowed_origins(server.allowed_origins))

    def check(self, request: Incoming) -> None:
        """Raise ApiError (421, 403) for a request a browser was tricked into sending."""
        host = request.headers.get("Host")
        if self.hosts is not None and host is not None and _host_name(host) not in self.hosts:
            raise ApiError(
                421,
                f"this server does not answer for the host name "
                f"{_quote(_host_name(host))} (the Host header): if clients "
                "reach it by that name (through a proxy or a DNS name), add "
                "the name to server.allowed_hosts",
            )
        if request.method in WRITE_METHODS and self.origins is not None:
            _check_origin(request, host, self.origins)


def _check_origin(request: Incoming, host: str | None, allowed: frozenset[str]) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        # Every browser sends Origin with a write; Sec-Fetch-Site alone means a
        # browser that did not, on a page of another site.
        if request.headers.get("Sec-Fetch-Site") != "cross-site":
            return
    elif (host is not None and _same_origin(origin, host)) or _normal_origin(origin) in allowed:
        return
    page = _quote(origin) if origin is not None else "another site"
    raise ApiError(
        403,
        f"writes from web pages of other origins are refused: this request "
        f"came from a page of {page} (the Origin header), not from this "
        "server's own origin; to allow that page, add its origin to "
        "server.allowed_origins (clients other than browsers send no Origin "
        "header and are not affected)",
    )


def _quote(value: str) -> str:
    return repr(value[:100])


def _allowed_hosts(server: ServerConfig) -> frozenset[str] | None:
    if "*" in server.allowed_hosts:
        return None
    if server.allowed_hosts:
        return frozenset(_host_name(name) for name in server.allowed_hosts)
    listen = _host_name(server.host)
    if listen in EVERY_INTERFACE:
        return None
    return frozenset({listen, *LOOPBACK_NAMES}) if _is_loopback(listen) else frozenset({listen})


def _allowed_origins(origins: list[str]) -> frozenset[str] | None:
    return None if "*" in origins else frozenset(_normal_origin(o) for o in origins)


def _host_name(host: str) -> str:
    """``Host``'s name alone: lower case, no port, no brackets, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _split_origin(origin: str) -> tuple[str, str, str]:
    """(scheme, host name, port) of ``scheme://host[:port]``; the port made explicit."""
    scheme, _, authority = origin.strip().lower().partition("://")
    name = _host_name(authority)
    if authority.startswith("["):
        port = authority.partition("]")[2].removeprefix(":")
    else:
        port = authority.partition(":")[2] if authority.count(":") == 1 else ""
    return scheme, name, port or DEFAULT_PORTS.get(scheme, "")


def _normal_origin(origin: str) -> str:
    scheme, name, port = _split_origin(origin)
    return f"{scheme}://{name}:{port}"


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``Origin`` names the server the request reached.

    The scheme is the origin's: behind a proxy that ends TLS the request
    arrives as http, yet ``https://name`` and ``Host: name`` are one origin.
    """
    scheme, name, port = _split_origin(origin)
    host_port = (
        host.rpartition("]")[2]
        if host.startswith("[")
        else (host.partition(":")[2] if host.count(":") == 1 else "")
    )
    host_port = host_port.removeprefix(":") or DEFAULT_PORTS.get(scheme, "")
    return name == _host_name(host) and port == host_port


def _is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False

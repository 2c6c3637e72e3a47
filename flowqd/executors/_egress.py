"""Where the http and llm nodes may connect ([egress]) and how much of an answer they read.

The policy is checked on the addresses a connection really uses: an httpcore
network backend resolves the host, checks every address and connects to an
address it checked, so a name that resolves elsewhere between the check and
the connection (DNS rebinding) cannot slip through. Redirects are not
followed (httpx's default), so every request is one checked connection.

Executors get no config, so a worker installs its settings for the tasks it
starts (``install``, a ContextVar); anything else gets the open default: no
policy, the default ``limits.max_response_bytes``.
"""

from __future__ import annotations

import ipaddress
import re
from contextvars import ContextVar
from typing import Any

import attrs
import httpcore
import trio

from flowqd.config import Config, LimitsConfig
from flowqd.errors import NodeError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_HOST = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*)(\.[a-z0-9_-]+)*\.?")


class EgressRefused(NodeError):
    """Raised when the egress policy refuses every address of a node's request.

    The message names the host, the address and the rule; change ``[egress]``
    to permit it.
    """


@attrs.frozen
class Rule:
    """One ``egress.allow`` / ``egress.deny`` entry."""

    text: str  # as configured
    network: Network | None = None
    host: str | None = None  # lower case; ".example.com" for "*.example.com"

    def matches(self, host: str, address: Address) -> bool:
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        assert self.host is not None
        name = host.lower().rstrip(".")
        return name.endswith(self.host) if self.host.startswith(".") else name == self.host


def parse_rule(text: str) -> Rule:
    """An entry as a Rule; ValueError saying what an entry may be."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        name = text.lower().rstrip(".")
        if not _HOST.fullmatch(name):
            raise ValueError(
                f"expected a host name (api.example.com), *.domain (*.example.com), an IP "
                f"address or a CIDR network (10.0.0.0/8), got {text!r}"
            ) from None
        return Rule(text, host=name[1:] if name.startswith("*.") else name)
    return Rule(text, network=_unmapped_network(network))


def _unmapped_network(network: Network) -> Network:
    mapped = network.network_address.ipv4_mapped if network.version == 6 else None
    if mapped is None or network.prefixlen < 96:
        return network
    return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")


def unmapped(address: Address) -> Address:
    """IPv4-mapped IPv6 (::ffff:127.0.0.1) is the IPv4 address it carries."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def private_kind(address: Address) -> str | None:
    """Why ``address`` counts as private (loopback, link-local...), or None when it is global."""
    for kind in ("loopback", "link-local", "unspecified", "multicast", "private", "reserved"):
        if getattr(address, "is_" + kind.replace("-", "_")):
            return kind
    return None if address.is_global else "not globally routable"


@attrs.frozen
class EgressPolicy:
    """``[egress]``: deny entries first, then allow entries (when any), then private addresses."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = ()
    private_refused: str | None = None  # why private addresses are refused; None: they are not

    @property
    def open(self) -> bool:
        return not (self.allow or self.deny or self.private_refused)

    @classmethod
    def from_config(cls, config: Config) -> EgressPolicy:
        egress = config.egress
        # Entries were checked when the config was built (config._egress_rules).
        allow = tuple(parse_rule(text) for text in egress.allow)
        deny = tuple(parse_rule(text) for text in egress.deny)
        keys = bool(config.auth.keys or config.auth.keys_file)
        reason = None
        if egress.private == "deny":
            reason = 'egress.private is "deny"'
        elif egress.private == "auto" and keys:
            reason = "API keys are configured"
        return cls(allow, deny, reason)

    def refusal(self, host: str, address: Address) -> str | None:
        """Why a connection to ``address`` for ``host`` is refused; None when it is permitted."""
        address = unmapped(address)
        where = f"egress refused {address}{{}} for host {host!r}"
        for rule in self.deny:
            if rule.matches(host, address):
                return f"{where.format('')}: egress.deny has {rule.text!r}"
        if self.allow:
            if any(rule.matches(host, address) for rule in self.allow):
                return None
            return (
                f"{where.format('')}: neither is in egress.allow, which lists all that may be "
                "reached; add the host or the address to egress.allow to permit it"
            )
        kind = private_kind(address)
        if kind is not None and self.private_refused is not None:
            return (
                f"{where.format(f' ({kind})')}: private addresses are refused because "
                f"{self.private_refused}; add it to egress.allow to permit it (egress.allow "
                "then lists all that may be reached)"
            )
        return None


@attrs.frozen
class Outbound:
    """A worker's settings for outbound requests."""

    policy: EgressPolicy = EgressPolicy()
    max_response_bytes: int = LimitsConfig().max_response_bytes


OPEN = Outbound()  # frozen: safe to share as the default
_OUTBOUND: ContextVar[Outbound] = ContextVar("flowqd_outbound", default=OPEN)


def install(config: Config) -> None:
    """Give the calling task, and every task it starts from now on, ``config``'s settings."""
    _OUTBOUND.set(Outbound(EgressPolicy.from_config(config), config.limits.max_response_bytes))


def outbound() -> Outbound:
    return _OUTBOUND.get()


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Trio connections to addresses the policy permits, found by resolving the host here."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy
        self._trio = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with trio.fail_after(float("inf") if timeout is None else timeout):
                return await self._connect(host, port, local_address, socket_options)
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"no connection to {host} within {timeout} s") from None

    async def _connect(
        self, host: str, port: int, local_address: str | None, socket_options: Any
    ) -> httpcore.AsyncNetworkStream:
        try:
            found = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        permitted: list[str] = []
        refusals: list[str] = []
        for *_info, sockaddr in found:
            text = str(sockaddr[0])
            refusal = self._policy.refusal(host, ipaddress.ip_address(text))
            if refusal is not None:
                refusals.append(refusal)
            elif text not in permitted:
                permitted.append(text)
        if not permitted:
            raise EgressRefused(refusals[0] if refusals else f"{host!r} resolved to nothing")
        failure: httpcore.ConnectError | None = None
        for address in permitted:  # only addresses checked above: nothing resolves again
            try:
                return await self._trio.connect_tcp(
                    address, port, None, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused(f"egress refused the unix socket {path!r}: nodes connect over TCP")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

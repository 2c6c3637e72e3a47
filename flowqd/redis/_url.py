"""Where to connect: ``redis.url`` or the separate host/port/... settings."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import attrs

from flowqd.config import RedisConfig, mask_url
from flowqd.errors import ConfigError

_URL_SHAPE = "redis://[[user]:password@]host[:port][/db] or rediss://... for TLS"


@attrs.frozen
class Target:
    """One Redis server and how to log in to it."""

    host: str
    port: int
    username: str | None
    password: str | None = attrs.field(repr=False)
    db: int
    tls: bool

    @property
    def address(self) -> str:
        """``host:port`` as a person would type it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(config: RedisConfig) -> Target:
    """The server of ``config``; raise ConfigError if ``redis.url`` is malformed.

    A part the URL leaves out (user name, password, db) falls back to the
    separate setting, so ``REDIS_URL`` plus ``REDIS_PASSWORD`` works. TLS is on
    for ``rediss://`` or when ``redis.tls`` is true.
    """
    if config.url is None:
        return Target(
            host=config.host,
            port=config.port,
            username=config.username,
            password=config.password,
            db=config.db,
            tls=config.tls,
        )
    url = config.url.strip()

    def bad(why: str) -> ConfigError:
        return ConfigError([f"redis.url: {why}: expected {_URL_SHAPE}, got {mask_url(url)!r}"])

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.scheme not in ("redis", "rediss"):
        raise bad(f"unknown scheme {parts.scheme + '://' if parts.scheme else 'missing'}")
    if not parts.hostname:
        raise bad("no host")
    if parts.query or parts.fragment:
        raise bad("query parameters are not supported")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise bad(f"the path must be a database number, not {path!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return Target(
        host=parts.hostname,
        port=6379 if port is None else port,
        username=username if username is not None else config.username,
        password=password if password is not None else config.password,
        db=int(path) if path else config.db,
        tls=parts.scheme == "rediss" or config.tls,
    )

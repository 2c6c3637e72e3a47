"""API keys: bearer tokens kept only as SHA-256 hashes; the ring a main checks them with.

A key is a random token (``fqd_`` + 43 url-safe characters, 256 bits), so a
plain SHA-256 is enough to keep the stored form useless to a reader of the
config; a slow hash would only add CPU to every request. A key file or
``auth.keys`` holds one entry per key: ``NAME:SHA256HEX`` or
``NAME:SHA256HEX:admin``. The name is what a job records as its owner.
A running main follows changes to ``auth.keys_file`` within a second
(``KeysFileWatch``); ``flowqd keys`` (``keys_command.py``) edits that file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

import attrs

from flowqd.config import AuthConfig, Config
from flowqd.errors import ConfigError
from flowqd.sessions import SessionSigner

log = logging.getLogger("flowqd.auth")

KEY_PREFIX = "fqd_"
ENTRY = re.compile(r"(?P<name>[A-Za-z0-9_.@-]{1,64}):(?P<digest>[0-9a-f]{64})(?P<admin>:admin)?")
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
# How often a running main looks at auth.keys_file for added and revoked keys.
RELOAD_INTERVAL_S = 1.0


@attrs.frozen
class Principal:
    """Who makes a request: a key's name, or None for an anonymous caller."""

    name: str | None
    admin: bool

    def may_see(self, owner: str | None) -> bool:
        """Jobs belong to the key that made them; admin keys see every job."""
        return self.admin or owner == self.name


# With no keys configured (on loopback, or allowed explicitly) everyone is trusted.
OPEN_ACCESS = Principal(name=None, admin=True)
ANONYMOUS = Principal(name=None, admin=False)


@attrs.frozen
class KeyEntry:
    name: str
    digest: str
    admin: bool

    @property
    def line(self) -> str:
        return f"{self.name}:{self.digest}" + (":admin" if self.admin else "")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_entry(text: str) -> KeyEntry | None:
    match = ENTRY.fullmatch(text.strip())
    if match is None:
        return None
    return KeyEntry(match["name"], match["digest"], bool(match["admin"]))


def read_keys_file(path: Path) -> list[KeyEntry]:
    """Entries of a key file; raises ConfigError naming each bad line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError([f"auth.keys_file: cannot read {path}: {exc.strerror}"]) from None
    entries: list[KeyEntry] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry = parse_entry(line)
        if entry is None:
            # Never echo the line: a pasted plaintext key would end up in the log.
            problems.append(
                f"auth.keys_file: {path}, line {number}: expected NAME:SHA256HEX or "
                "NAME:SHA256HEX:admin (as written by `flowqd keys add NAME`)"
            )
        else:
            entries.append(entry)
    if problems:
        raise ConfigError(problems)
    return entries


def load_keys(config: AuthConfig) -> list[KeyEntry]:
    """Every configured key, from ``auth.keys`` and ``auth.keys_file``; names must be unique."""
    entries = config_entries(config)
    if config.keys_file:
        entries += read_keys_file(Path(config.keys_file))
    return unique(entries)


def config_entries(config: AuthConfig) -> list[KeyEntry]:
    """The keys of ``auth.keys`` (the config file, the environment or ``--set``)."""
    return [e for e in (parse_entry(k) for k in config.keys) if e is not None]


def unique(entries: list[KeyEntry]) -> list[KeyEntry]:
    """``entries``, or ConfigError naming each name configured twice."""
    seen: set[str] = set()
    problems: list[str] = []
    for entry in entries:
        if entry.name in seen:
            problems.append(
                f"auth: key name {entry.name!r} is configured twice; names must "
                "be unique (a job's owner is its key's name)"
            )
        seen.add(entry.name)
    if problems:
        raise ConfigError(problems)
    return entries


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.define(eq=False)
class KeysFileWatch:
    """Notices changes to ``auth.keys_file`` so a running main follows ``keys add`` and
    ``keys revoke``: one stat at most every ``interval_s`` on the request path, a read
    only when the file's inode, size or times changed."""

    path: Path
    fixed: list[KeyEntry]  # auth.keys: they only change with a restart
    interval_s: float = RELOAD_INTERVAL_S
    next_check: float = 0.0
    signature: tuple[int, ...] | None = None

    def _stat(self) -> tuple[int, ...]:
        """What identifies the file's content without reading it; () when it is missing."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ()
        except OSError as exc:
            if self.signature != (-1,):
                log.warning("auth.keys_file: cannot stat %s: %s", self.path, exc.strerror)
            return (-1,)
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def mark(self, now: float) -> None:
        """Take the file as it is now as read; call it *before* reading it, so a change
        made in between is seen by the next poll."""
        self.signature = self._stat()
        self.next_check = now + self.interval_s

    def poll(self, now: float) -> list[KeyEntry] | None:
        """Every key, when the file changed since the last look; None when it did not
        (or cannot be used now: the keys read before stay, with a warning)."""
        self.next_check = now + self.interval_s
        signature = self._stat()
        if signature == self.signature or signature == (-1,):
            self.signature = signature
            return None
        self.signature = signature
        if not signature:
            log.warning("auth.keys_file %s is gone: its keys no longer work", self.path)
        try:
            return unique(self.fixed + read_keys_file(self.path))
        except ConfigError as exc:
            log.warning(
                "auth.keys_file changed but is not usable, so the keys read before stay "
                "in force until it is fixed: %s",
                "; ".join(exc.problems),
            )
            return None


class KeyRing:
    """Turns an ``Authorization`` header or a dashboard session token into a Principal."""

    def __init__(
        self,
        entries: Iterable[KeyEntry],
        *,
        allow_anonymous: bool,
        sessions: SessionSigner | None = None,
        watch: KeysFileWatch | None = None,
    ) -> None:
        self._allow_anonymous = allow_anonymous
        self.sessions = sessions or SessionSigner.per_process()
        self._watch = watch
        self._install(list(entries))
        # Open access is decided at start-up: revoking every key later closes
        # the API rather than opening it.
        self._open_when_empty = not self._by_digest

    def _install(self, entries: list[KeyEntry]) -> None:
        self._by_digest = {e.digest: Principal(e.name, e.admin) for e in entries}
        self._by_name = {e.name: e for e in entries}

    @classmethod
    def from_config(cls, config: Config) -> KeyRing:
        """The keys of ``config``; raises ConfigError when they are unusable or missing.

        Without keys the API is open, so it may only listen on loopback unless
        ``auth.allow_anonymous`` says otherwise.
        """
        watch = None
        if config.auth.keys_file:
            watch = KeysFileWatch(Path(config.auth.keys_file), config_entries(config.auth))
            watch.mark(time.monotonic())
        entries = load_keys(config.auth)
        if not entries and not config.auth.allow_anonymous and not is_loopback(config.server.host):
            raise ConfigError(
                [
                    f"server.host is {config.server.host!r}, not a loopback address, and no API "
                    "keys are configured: add one with `flowqd keys add NAME` (auth.keys or "
                    "auth.keys_file), or set auth.allow_anonymous = true to serve without keys"
                ]
            )
        return cls(
            entries,
            allow_anonymous=config.auth.allow_anonymous,
            sessions=SessionSigner.from_config(config),
            watch=watch,
        )

    def _refresh(self) -> None:
        watch = self._watch
        if watch is None:
            return
        now = time.monotonic()
        if now < watch.next_check:
            return
        entries = watch.poll(now)
        if entries is None:
            return
        before = set(self._by_name)
        self._install(entries)
        after = set(self._by_name)
        log.info(
            "auth.keys_file %s changed: %d keys (added: %s; removed: %s)",
            watch.path,
            len(after),
            ", ".join(sorted(after - before)) or "none",
            ", ".join(sorted(before - after)) or "none",
        )
        if not after and not self._open_when_empty:
            log.warning("no API keys are left: every request that needs a key is refused")

    @property
    def has_keys(self) -> bool:
        return bool(self._by_digest) or not self._open_when_empty

    def names(self) -> set[str]:
        return set(self._by_name)

    def _anonymous(self) -> Principal | None:
        if not self._by_digest and self._open_when_empty:
            return OPEN_ACCESS
        return ANONYMOUS if self._allow_anonymous else None

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller, or None when the request must be refused with 401."""
        self._refresh()
        if not authorization:
            return self._anonymous()
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        if not self._by_digest:
            return OPEN_ACCESS if self._open_when_empty else None
        return self._by_digest.get(hash_key(token.strip()))

    def issue_session(self, who: Principal, lifetime_s: int) -> str:
        """A session token for ``who`` (a key of this ring) valid for ``lifetime_s``."""
        entry = self._by_name[str(who.name)]
        return self.sessions.issue(
            entry.name, entry.admin, entry.digest, expires=int(time.time()) + lifetime_s
        )

    def session(self, token: str) -> Principal | None:
        """The key a session token stands for; None when it is forged, expired, or its
        key was revoked, replaced or changed its admin flag since the sign-in."""
        self._refresh()
        name = self.sessions.claimed_name(token)
        entry = None if name is None else self._by_name.get(name)
        if entry is None:
            return None
        session = self.sessions.verify(token, entry.digest, now=time.time())
        if session is None or session.admin != entry.admin:
            return None
        return Principal(entry.name, entry.admin)

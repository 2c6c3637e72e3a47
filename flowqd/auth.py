"""API keys: bearer tokens kept only as SHA-256 hashes, and ``flowqd keys add``.

A key is a random token (``fqd_`` + 43 url-safe characters, 256 bits), so a
plain SHA-256 is enough to keep the stored form useless to a reader of the
config; a slow hash would only add CPU to every request. A key file or
``auth.keys`` holds one entry per key: ``NAME:SHA256HEX`` or
``NAME:SHA256HEX:admin``. The name is what a job records as its owner.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path

import attrs

from flowqd.config import AuthConfig, Config
from flowqd.errors import ConfigError

KEY_PREFIX = "fqd_"
ENTRY = re.compile(r"(?P<name>[A-Za-z0-9_.@-]{1,64}):(?P<digest>[0-9a-f]{64})(?P<admin>:admin)?")
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


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
    entries = [e for e in (parse_entry(k) for k in config.keys) if e is not None]
    if config.keys_file:
        entries += read_keys_file(Path(config.keys_file))
    seen: dict[str, KeyEntry] = {}
    problems: list[str] = []
    for entry in entries:
        if entry.name in seen:
            problems.append(
                f"auth: key name {entry.name!r} is configured twice; names must "
                "be unique (a job's owner is its key's name)"
            )
        seen[entry.name] = entry
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


class KeyRing:
    """Turns an ``Authorization`` header into a Principal."""

    def __init__(self, entries: Iterable[KeyEntry], *, allow_anonymous: bool) -> None:
        self._by_digest = {e.digest: Principal(e.name, e.admin) for e in entries}
        self._anonymous = (
            OPEN_ACCESS if not self._by_digest else (ANONYMOUS if allow_anonymous else None)
        )

    @classmethod
    def from_config(cls, config: Config) -> KeyRing:
        """The keys of ``config``; raises ConfigError when they are unusable or missing.

        Without keys the API is open, so it may only listen on loopback unless
        ``auth.allow_anonymous`` says otherwise.
        """
        entries = load_keys(config.auth)
        if not entries and not config.auth.allow_anonymous and not is_loopback(config.server.host):
            raise ConfigError(
                [
                    f"server.host is {config.server.host!r}, not a loopback address, and no API "
                    "keys are configured: add one with `flowqd keys add NAME` (auth.keys or "
                    "auth.keys_file), or set auth.allow_anonymous = true to serve without keys"
                ]
            )
        return cls(entries, allow_anonymous=config.auth.allow_anonymous)

    @property
    def has_keys(self) -> bool:
        return bool(self._by_digest)

    def names(self) -> set[str]:
        return {p.name for p in self._by_digest.values() if p.name is not None}

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller, or None when the request must be refused with 401."""
        if not authorization:
            return self._anonymous
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        if not self._by_digest:
            return OPEN_ACCESS
        return self._by_digest.get(hash_key(token.strip()))


# ---- flowqd keys add ---------------------------------------------------------------


def add_keys_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """The ``keys`` command: ``flowqd keys add NAME [--admin] [--file PATH]``.

    Returns the ``add`` parser, so the caller can add the common options to it.
    """
    keys = commands.add_parser("keys", help="manage API keys: keys add NAME (stored as hashes)")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create a key for NAME and print it once")
    add.add_argument("name", help="who the key is for; jobs record it as their owner")
    add.add_argument(
        "--admin",
        action="store_true",
        help="the key sees every job and may change flows, credentials, the queue",
    )
    add.add_argument(
        "--file", metavar="PATH", help="key file to append to (default: auth.keys_file)"
    )
    return add


def run_keys_command(args: argparse.Namespace, config: Config) -> int:
    """``flowqd keys add``: print a new key on stdout once, store only its hash."""
    name: str = args.name
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        print(
            f"flowqd: error: key name {name!r}: use 1-64 letters, digits and _ . @ -",
            file=sys.stderr,
        )
        return 2
    try:
        existing = load_keys(
            attrs.evolve(config.auth, keys_file=args.file or config.auth.keys_file)
        )
    except ConfigError as exc:
        for line in exc.problems:
            print(f"flowqd: error: {line}", file=sys.stderr)
        return 2
    if any(e.name == name for e in existing):
        print(
            f"flowqd: error: a key named {name!r} already exists; pick another name "
            "(remove its line from the keys file to replace it)",
            file=sys.stderr,
        )
        return 2
    key = new_key()
    entry = KeyEntry(name, hash_key(key), bool(args.admin))
    target = args.file or config.auth.keys_file
    if target:
        append_entry(Path(target), entry)
        print(f"flowqd: key {name!r} added to {target}; it is shown only once:", file=sys.stderr)
    else:
        print(
            "flowqd: no auth.keys_file is configured; add this entry to auth.keys in "
            f"flowqd.toml:\n  {entry.line}\nThe key is shown only once:",
            file=sys.stderr,
        )
    print(key)
    return 0


def append_entry(path: Path, entry: KeyEntry) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(entry.line + "\n")

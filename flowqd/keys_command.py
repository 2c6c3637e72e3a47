"""``flowqd keys add | list | revoke``: the key file a running main follows.

Changes to ``auth.keys_file`` reach running mains within a second
(``auth.KeysFileWatch``), so add and revoke need no restart. Keys in
``auth.keys`` (the config file, FLOWQD_AUTH__KEYS or ``--set``) are the
operator's to edit: these commands show them but never rewrite a config.
Writers take an exclusive lock on the key file, so an add racing a revoke
loses neither.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import attrs

from flowqd.auth import KeyEntry, config_entries, hash_key, new_key, read_keys_file, unique
from flowqd.config import Config
from flowqd.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
ENV_KEYS = "FLOWQD_AUTH__KEYS"


def add_keys_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> list[argparse.ArgumentParser]:
    """The ``keys`` command and its actions; returns the action parsers, so the
    caller can add the common options to each."""
    keys = commands.add_parser("keys", help="manage API keys: add NAME, list, revoke NAME")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create a key for NAME and print it once")
    add.add_argument("name", help="who the key is for; jobs record it as their owner")
    add.add_argument(
        "--admin",
        action="store_true",
        help="the key sees every job and may change flows, credentials, the queue",
    )
    listing = sub.add_parser("list", help="every key's name, admin flag and where it is defined")
    listing.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    revoke = sub.add_parser(
        "revoke", help="remove NAME's key from auth.keys_file (running mains follow in ~1 s)"
    )
    revoke.add_argument("name", help="the key's name, as `flowqd keys list` shows it")
    for action in (add, listing, revoke):
        action.add_argument("--file", metavar="PATH", help="key file (default: auth.keys_file)")
    return [add, listing, revoke]


def run_keys_command(args: argparse.Namespace, config: Config) -> int:
    """Run ``flowqd keys ACTION``; the exit status (2: the action was refused)."""
    keys_file = args.file or config.auth.keys_file
    origin = _config_origin(config, list(getattr(args, "overrides", [])))
    try:
        if args.keys_command == "add":
            return _add(args.name, bool(args.admin), config, keys_file)
        if args.keys_command == "list":
            return _list(defined_keys(config, keys_file, origin), as_json=bool(args.json))
        return _revoke(args.name, defined_keys(config, keys_file, origin))
    except ConfigError as exc:
        return _fail(*exc.problems)


def _fail(*lines: str) -> int:
    for line in lines:
        print(f"flowqd: error: {line}", file=sys.stderr)
    return 2


def _config_origin(config: Config, overrides: list[str]) -> str:
    # Config keeps values, not where each came from: the layers win in this order.
    if any(o.replace(" ", "").startswith("auth.keys=") for o in overrides):
        return "--set auth.keys"
    if ENV_KEYS in os.environ:
        return f"environment variable {ENV_KEYS}"
    return f"auth.keys in {config.source}"


@attrs.frozen
class Listed:
    name: str
    admin: bool
    source: str  # "config" or "keys_file"
    where: str


def defined_keys(config: Config, keys_file: str | None, origin: str = "auth.keys") -> list[Listed]:
    """Every key with where it is defined; ConfigError for a bad file or a name twice."""
    fixed = config_entries(config.auth)
    in_file = read_keys_file(Path(keys_file)) if keys_file else []
    unique(fixed + in_file)
    return [Listed(e.name, e.admin, "config", origin) for e in fixed] + [
        Listed(e.name, e.admin, "keys_file", str(keys_file)) for e in in_file
    ]


def _list(keys: list[Listed], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps([attrs.asdict(k) for k in keys], indent=2))
        return 0
    if not keys:
        print("no API keys are configured (add one with `flowqd keys add NAME`)", file=sys.stderr)
        return 0
    rows = [("NAME", "ADMIN", "DEFINED IN")] + [
        (k.name, "yes" if k.admin else "no", k.where) for k in keys
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, admin, where in rows:
        print(f"{name:<{widths[0]}}  {admin:<{widths[1]}}  {where}")
    return 0


def _add(name: str, admin: bool, config: Config, keys_file: str | None) -> int:
    if not NAME.fullmatch(name):
        return _fail(f"key name {name!r}: use 1-64 letters, digits and _ . @ -")
    key = new_key()
    entry = KeyEntry(name, hash_key(key), admin)
    if not keys_file:
        if any(k.name == name for k in defined_keys(config, None)):
            return _fail(f"a key named {name!r} already exists; pick another name")
        print(
            "flowqd: no auth.keys_file is configured; add this entry to auth.keys in "
            f"flowqd.toml:\n  {entry.line}\nThe key is shown only once:",
            file=sys.stderr,
        )
        print(key)
        return 0
    path = Path(keys_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path, create=True) as f:
        if any(k.name == name for k in defined_keys(config, keys_file)):
            return _fail(
                f"a key named {name!r} already exists; pick another name, or "
                f"`flowqd keys revoke {name}` first to replace it"
            )
        f.seek(0, os.SEEK_END)
        f.write(entry.line + "\n")
    print(f"flowqd: key {name!r} added to {keys_file}; it is shown only once:", file=sys.stderr)
    print(key)
    return 0


def _revoke(name: str, keys: list[Listed]) -> int:
    found = next((k for k in keys if k.name == name), None)
    if found is None:
        known = ", ".join(k.name for k in keys) or "none"
        return _fail(f"no key named {name!r}; the keys are: {known}")
    if found.source == "config":
        return _fail(
            f"key {name!r} is defined in {found.where}, not in a key file: remove its "
            f"entry there and restart the mains (flowqd keys revoke edits auth.keys_file only)"
        )
    path = Path(found.where)
    with _locked(path, create=False) as f:
        lines = f.read().splitlines(keepends=True)
        kept = [line for line in lines if not _names(line, name)]
        _replace(path, "".join(kept))
    print(
        f"flowqd: key {name!r} removed from {path}; running mains refuse it within "
        "about a second, and its dashboard sessions end with it",
        file=sys.stderr,
    )
    return 0


def _names(line: str, name: str) -> bool:
    # Parsing the line, not matching text: a comment that mentions the name stays.
    text = line.strip()
    if not text or text.startswith("#"):
        return False
    entry_name, sep, _ = text.partition(":")
    return bool(sep) and entry_name == name


@contextlib.contextmanager
def _locked(path: Path, *, create: bool) -> Iterator[IO[str]]:
    """The key file open for reading and appending under an exclusive lock.

    A revoke replaces the file by a rename: a writer that waited for the lock
    on the old file would write into a file nobody reads, so after locking it
    checks that the path still names the file it holds, and opens it again if not.
    """
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
    while True:
        fd = os.open(path, flags, 0o600)
        f = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield f
                return
        finally:
            f.close()


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, keeping its mode and (when allowed) owner."""
    st = os.stat(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), st.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

"""Lua scripts run by EVALSHA, with the sha computed here, and pipeline packing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
import hiredis

from flowqd.errors import RedisReplyError

Arg = bytes | str | int | float

# hiredis's stub types the argument as a 1-tuple; it takes a tuple of any length.
pack_command = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


@attrs.frozen(eq=False)
class Packed:
    """``count`` arguments already packed as RESP bulk strings (``bulk``), to
    go last in a script call: for a caller that makes thousands of arguments
    of known types (the worker's flush) and packs each as it makes it, cheaper
    than ``pack_command``, which copies every argument twice more."""

    count: int
    data: bytes = attrs.field(repr=False)


def bulk(value: Arg) -> bytes:
    """``value`` as ``pack_command`` packs an argument: str as UTF-8, an int or
    a float by its repr."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif value.__class__ is int or value.__class__ is float:
        data = repr(value).encode()
    else:
        raise TypeError(f"a script argument must be str, int, float or bytes, not {type(value)}")
    return b"$%d\r\n%b\r\n" % (len(data), data)


@attrs.frozen(eq=False)
class ScriptCall:
    """One run of a script with its keys and arguments, packed as EVALSHA once."""

    script: Script
    packed: bytes = attrs.field(repr=False)
    # Routes the call in a Redis Cluster.
    first_key: Arg | None = None


@attrs.frozen(eq=False)
class Script:
    """A Lua script known by its SHA1; Redis loads it on first NOSCRIPT."""

    source: bytes = attrs.field(repr=False)
    sha: str
    load_packed: bytes = attrs.field(repr=False)

    @classmethod
    def from_source(cls, source: str | bytes) -> Script:
        body = source.encode() if isinstance(source, str) else source
        return cls(
            source=body,
            sha=hashlib.sha1(body, usedforsecurity=False).hexdigest(),
            load_packed=pack_command((b"SCRIPT", b"LOAD", body)),
        )

    def call(self, keys: Sequence[Arg], args: Sequence[Arg | Packed]) -> ScriptCall:
        """This script with ``keys`` and ``args``, the last of which may be ``Packed``."""
        tail = args[-1] if args else None
        if not isinstance(tail, Packed):
            plain = cast(Sequence[Arg], args)
            packed = pack_command((b"EVALSHA", self.sha, len(keys), *keys, *plain))
        else:
            head = (b"EVALSHA", self.sha, len(keys), *keys, *cast(Sequence[Arg], args[:-1]))
            # pack_command's head after its own count, then the packed ones.
            count = len(head)
            own = len(b"*%d\r\n" % count)
            packed = b"".join(
                (b"*%d\r\n" % (count + tail.count), pack_command(head)[own:], tail.data)
            )
        return ScriptCall(self, packed, keys[0] if keys else None)


def pack_pipeline(commands: Sequence[Sequence[Arg] | ScriptCall]) -> tuple[bytes, bool]:
    """All commands as one buffer, and whether any of them is a script call."""
    parts: list[bytes] = []
    has_scripts = False
    for command in commands:
        if isinstance(command, ScriptCall):
            parts.append(command.packed)
            has_scripts = True
        elif isinstance(command, tuple):
            parts.append(pack_command(command))
        else:
            parts.append(pack_command(tuple(command)))
    return b"".join(parts), has_scripts


def is_noscript(reply: Any) -> bool:
    return reply.__class__ is RedisReplyError and str(reply).startswith("NOSCRIPT")


def reload_request(
    commands: Sequence[Sequence[Arg] | ScriptCall], replies: list[Any]
) -> tuple[list[int], list[Script], bytes] | None:
    """What to send again after NOSCRIPT replies: None if there were none.

    Returns the indices of the failed script calls, the scripts to load, and
    the buffer: SCRIPT LOAD for each script, then the failed calls in order.
    A call that hit NOSCRIPT did not run, so running it again is safe; it
    runs after the rest of the pipeline, which is fine because a pipeline is
    not a transaction.
    """
    failed = [
        i
        for i, reply in enumerate(replies)
        if is_noscript(reply) and commands[i].__class__ is ScriptCall
    ]
    if not failed:
        return None
    calls: list[ScriptCall] = [commands[i] for i in failed]  # type: ignore[misc]
    scripts = list({id(call.script): call.script for call in calls}.values())
    data = b"".join([s.load_packed for s in scripts] + [call.packed for call in calls])
    return failed, scripts, data

"""The dashboard's session tokens: signed, expiring, bound to one key, never the key itself.

A token is ``s1~NAME~ADMIN~EXPIRES~SID~SIGNATURE``: the key's name, its admin
flag (1 or 0), the Unix time it ends, a random session id, and an
HMAC-SHA256 over those fields *and the stored hash of the key*. Binding the
hash means a session ends as soon as its key is revoked or replaced by a new
key of the same name (a rotation after a leak), with no server-side session
store: every API process checks a token on its own.

The HMAC key is derived from ``security.secret_key``, so every process that
shares the secret accepts every other one's sessions. Without a secret each
process draws a random one: sessions then end when the process restarts, and
are refused by the other processes of ``server.processes`` (hence a secret is
required there when keys are configured).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

import attrs

from flowqd.config import Config
from flowqd.credentials import load_secret
from flowqd.errors import ConfigError

VERSION = "s1"
SEPARATOR = "~"  # not in a key's name, a session id or url-safe base64
_LABEL = b"flowqd dashboard sessions v1\x00"


@attrs.frozen
class Session:
    """What a valid token says: who signed in, as admin or not, and until when."""

    name: str
    admin: bool
    expires: int
    sid: str


class SessionSigner:
    """Issues and checks session tokens under one HMAC key."""

    def __init__(self, secret: bytes) -> None:
        # A label of its own: the session key and the credential key
        # (credentials.Sealer) derive from one secret but never coincide.
        self._key = hashlib.sha256(_LABEL + secret).digest()

    @classmethod
    def per_process(cls) -> SessionSigner:
        """A random key: sessions end with this process and no other process accepts them."""
        return cls(os.urandom(32))

    @classmethod
    def from_config(cls, config: Config) -> SessionSigner:
        """Under ``security.secret_key``; raises ConfigError when it is needed and missing."""
        secret = load_secret(config.security)
        if secret:
            return cls(secret.encode())
        keyed = bool(config.auth.keys or config.auth.keys_file)
        if config.server.processes > 1 and config.dashboard.enabled and keyed:
            raise ConfigError(
                [
                    f"server.processes = {config.server.processes} with dashboard.enabled "
                    "needs security.secret_key (or FLOWQD_SECRET_KEY): without it each "
                    "process signs dashboard sessions with a key of its own, so a browser "
                    "signed in on one process is refused by the others; set the same "
                    "secret for every process"
                ]
            )
        return cls.per_process()

    def _sign(self, payload: str, key_digest: str) -> str:
        mac = hmac.new(self._key, f"{payload}{SEPARATOR}{key_digest}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def issue(self, name: str, admin: bool, key_digest: str, *, expires: int) -> str:
        """A token for the key ``name`` (stored hash ``key_digest``) ending at ``expires``."""
        sid = secrets.token_urlsafe(12)
        payload = SEPARATOR.join((VERSION, name, "1" if admin else "0", str(expires), sid))
        return f"{payload}{SEPARATOR}{self._sign(payload, key_digest)}"

    @staticmethod
    def claimed_name(token: str) -> str | None:
        """The key name a token claims, unverified: to look up the hash it must be signed with."""
        parts = token.split(SEPARATOR)
        return parts[1] if len(parts) == 6 and parts[0] == VERSION else None

    def verify(self, token: str, key_digest: str, *, now: float) -> Session | None:
        """The session, if ``token`` is signed for ``key_digest`` and not expired; else None."""
        payload, _, signature = token.rpartition(SEPARATOR)
        parts = payload.split(SEPARATOR)
        if len(parts) != 5 or parts[0] != VERSION:
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(payload, key_digest).encode()):
            return None
        _, name, admin, expires, sid = parts
        if not expires.isdigit() or int(expires) <= now or admin not in ("0", "1"):
            return None
        return Session(name, admin == "1", int(expires), sid)

"""Credentials sealed with AES-GCM under ``security.secret_key``.

The broker only ever stores sealed bytes. A sealed value starts with a short
fingerprint of the key, so a process holding another key can say exactly that
instead of a bare decryption failure.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flowqd.config import SecurityConfig
from flowqd.errors import ConfigError, CredentialError
from flowqd.queue.roles import SealedSecrets

_VERSION = b"\x01"
_FINGERPRINT_LEN = 4
_NONCE_LEN = 12
SHARE_KEY_HINT = "main and workers must share security.secret_key (or FLOWQD_SECRET_KEY)"


def load_secret(config: SecurityConfig) -> str | None:
    if config.secret_key:
        return config.secret_key
    if config.secret_key_file:
        path = Path(config.secret_key_file)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                [f"security.secret_key_file: cannot read {path}: {exc.strerror}"]
            ) from None
        if not text:
            raise ConfigError([f"security.secret_key_file: {path} is empty"])
        return text
    return None


class Sealer:
    """Seals and opens credential values with one key."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        key = hashlib.sha256(b"flowqd credentials v1\x00" + raw).digest()
        self._aead = AESGCM(key)
        self._fingerprint = hashlib.sha256(key).digest()[:_FINGERPRINT_LEN]

    @classmethod
    def ephemeral(cls) -> Sealer:
        """A random key, for the single-process embedded mode."""
        return cls(os.urandom(32))

    def seal(self, name: str, value: str) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        # The name is bound in as associated data: a sealed value copied to
        # another name does not open.
        sealed = self._aead.encrypt(nonce, value.encode(), name.encode())
        return _VERSION + self._fingerprint + nonce + sealed

    def open(self, name: str, sealed: bytes) -> str:
        head = 1 + _FINGERPRINT_LEN
        if sealed[:1] != _VERSION or len(sealed) < head + _NONCE_LEN:
            raise CredentialError(f"credential {name!r} is not in a format this flowqd reads")
        if sealed[1:head] != self._fingerprint:
            raise CredentialError(
                f"credential {name!r} was sealed with a different key: {SHARE_KEY_HINT}"
            )
        nonce, body = sealed[head : head + _NONCE_LEN], sealed[head + _NONCE_LEN :]
        try:
            return self._aead.decrypt(nonce, body, name.encode()).decode()
        except InvalidTag:
            raise CredentialError(
                f"credential {name!r} cannot be decrypted: {SHARE_KEY_HINT}"
            ) from None


class CredentialStore:
    """Named credentials kept sealed by the backend; plaintext only in memory, briefly."""

    def __init__(self, secrets: SealedSecrets, sealer: Sealer | None) -> None:
        self._secrets = secrets
        self._sealer = sealer

    def _need_sealer(self) -> Sealer:
        if self._sealer is None:
            raise CredentialError(
                "no security.secret_key is configured, so credentials cannot be sealed or "
                f"opened: set FLOWQD_SECRET_KEY; {SHARE_KEY_HINT}"
            )
        return self._sealer

    async def put(self, name: str, value: str) -> None:
        await self._secrets.put_secret(name, self._need_sealer().seal(name, value))

    async def get(self, name: str) -> str:
        sealed = await self._secrets.get_secret(name)
        if sealed is None:
            raise CredentialError(
                f"credential {name!r} does not exist: add it with PUT /api/v1/credentials/{name}"
            )
        return self._need_sealer().open(name, sealed)

    async def names(self) -> list[str]:
        return sorted(await self._secrets.list_secrets())

    async def delete(self, name: str) -> bool:
        return await self._secrets.delete_secret(name)

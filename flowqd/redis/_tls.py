"""TLS settings: a verifying SSLContext from ``redis.tls_*``.

Each of ``tls_ca``, ``tls_cert``, ``tls_key`` may be a file path, PEM text, or
base64-encoded PEM (Flowise's REDIS_CA/REDIS_CERT/REDIS_KEY are base64).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from flowqd.config import RedisConfig
from flowqd.errors import ConfigError

_PEM_MARK = b"-----BEGIN"


def load_pem(value: str, setting: str) -> bytes:
    """PEM bytes from a path, PEM text or base64-encoded PEM; ConfigError if none fits."""
    if _PEM_MARK.decode() in value:
        return value.encode()
    path = Path(value).expanduser()
    if _is_file(path):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError([f"redis.{setting}: cannot read {path}: {exc.strerror}"]) from None
        if _PEM_MARK not in data:
            raise ConfigError([f"redis.{setting}: {path} holds no PEM block (-----BEGIN ...)"])
        return data
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if _PEM_MARK not in data:
        raise ConfigError(
            [
                f"redis.{setting}: neither a readable file nor base64-encoded PEM; "
                "give a path to a PEM file or the file's content in base64"
            ]
        )
    return data


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # base64 of a certificate is longer than a file name may be
        return False


@contextlib.contextmanager
def _as_file(pem: bytes) -> Iterator[str]:
    # ssl can load a certificate chain and key only from files.
    fd, name = tempfile.mkstemp(prefix="flowqd-tls-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        yield name
    finally:
        os.unlink(name)


def build_ssl_context(config: RedisConfig) -> ssl.SSLContext:
    """A client context that verifies the server (chain and host name).

    With ``tls_ca`` only that CA is trusted, else the system's CAs.

    Blocking (reads files): call it from a thread.
    """
    if config.tls_ca is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        # A CA given trusts that CA only, as Flowise's ioredis does; the
        # system's CAs are for servers without a private CA.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
        try:
            context.load_verify_locations(cadata=load_pem(config.tls_ca, "tls_ca").decode())
        except ssl.SSLError as exc:
            raise ConfigError([f"redis.tls_ca: not a usable CA certificate: {exc}"]) from None
    if config.tls_key is not None and config.tls_cert is None:
        raise ConfigError(["redis.tls_key: set redis.tls_cert (REDIS_CERT) too"])
    if config.tls_cert is not None:
        cert = load_pem(config.tls_cert, "tls_cert")
        key = load_pem(config.tls_key, "tls_key") if config.tls_key is not None else None
        with contextlib.ExitStack() as stack:
            certfile = stack.enter_context(_as_file(cert))
            keyfile = stack.enter_context(_as_file(key)) if key is not None else None
            try:
                context.load_cert_chain(certfile, keyfile)
            except ssl.SSLError as exc:
                raise ConfigError(
                    [f"redis.tls_cert/redis.tls_key: not a matching certificate and key: {exc}"]
                ) from None
    return context

"""TLS: certificate loading (path, PEM, base64) and a verified round trip."""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from flowqd.config import RedisConfig
from flowqd.errors import BrokerUnavailable, ConfigError
from flowqd.redis import open_redis
from flowqd.redis._tls import build_ssl_context, load_pem
from tests.redis.certs import Pem, make_ca, make_leaf, write
from tests.redisproc import RedisServer, free_port


@attrs.frozen
class Pki:
    dir: Path
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca()
    other_ca, _ = make_ca("some other CA")
    pki = Pki(
        directory,
        ca,
        make_leaf(ca, ca_key, "redis server"),
        make_leaf(ca, ca_key, "flowqd client"),
        other_ca,
    )
    write(directory, "ca", ca)
    write(directory, "server", pki.server)
    write(directory, "client", pki.client)
    return pki


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- loading ------------------------------------------------------------------


def test_load_pem_from_path(pki: Pki) -> None:
    assert load_pem(str(pki.dir / "ca.crt"), "tls_ca") == pki.ca.cert


def test_load_pem_from_base64_as_flowise_passes_it(pki: Pki) -> None:
    assert load_pem(b64(pki.ca.cert), "tls_ca") == pki.ca.cert
    # Wrapped base64 (as `base64` prints it) works too.
    assert load_pem(base64.encodebytes(pki.ca.cert).decode(), "tls_ca") == pki.ca.cert


def test_load_pem_from_pem_text(pki: Pki) -> None:
    assert load_pem(pki.ca.cert.decode(), "tls_ca") == pki.ca.cert


@pytest.mark.parametrize("value", ["/no/such/file.pem", "bm90IGEgY2VydA==", "%%%"])
def test_load_pem_rejects_what_is_neither(value: str) -> None:
    with pytest.raises(ConfigError, match=r"redis\.tls_cert: neither a readable file nor base64"):
        load_pem(value, "tls_cert")


def test_load_pem_rejects_a_file_without_pem(tmp_path: Path) -> None:
    path = tmp_path / "junk.pem"
    path.write_bytes(b"junk")
    with pytest.raises(ConfigError, match="holds no PEM block"):
        load_pem(str(path), "tls_ca")


def test_context_verifies_and_takes_base64_cert_and_path_key(pki: Pki) -> None:
    context = build_ssl_context(
        RedisConfig(
            tls=True,
            tls_ca=b64(pki.ca.cert),
            tls_cert=b64(pki.client.cert),
            tls_key=str(pki.dir / "client.key"),
        )
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "flowqd test CA"),),)
    ]


def test_context_rejects_a_key_that_does_not_match(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="not a matching certificate and key"):
        build_ssl_context(RedisConfig(tls_cert=b64(pki.client.cert), tls_key=b64(pki.server.key)))


def test_context_wants_a_cert_with_the_key(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"set redis\.tls_cert"):
        build_ssl_context(RedisConfig(tls_key=b64(pki.client.key)))


# ---- a real TLS server --------------------------------------------------------


def _tls_supported() -> bool:
    binary = shutil.which("redis-server")
    if binary is None:
        return False
    # A build without TLS rejects the option; one with TLS complains about the file.
    result = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0", "--tls-cert-file", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "Bad directive or wrong number of arguments" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[tuple[RedisServer, int]]:
    if not _tls_supported():
        pytest.skip("this redis-server was built without TLS")
    tls_port = free_port()
    server = RedisServer(
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(pki.dir / "server.crt"),
        "--tls-key-file", str(pki.dir / "server.key"),
        "--tls-ca-cert-file", str(pki.dir / "ca.crt"),
        "--tls-auth-clients", "yes",
    )  # fmt: skip
    server.start()
    try:
        yield server, tls_port
    finally:
        server.close()


async def test_tls_round_trip_with_client_certificate(
    pki: Pki, tls_server: tuple[RedisServer, int]
) -> None:
    _, port = tls_server
    config = RedisConfig(
        url=f"rediss://127.0.0.1:{port}/1",
        tls_ca=b64(pki.ca.cert),
        tls_cert=str(pki.dir / "client.crt"),
        tls_key=b64(pki.client.key),
    )
    with trio.fail_after(10):
        async with open_redis(config) as redis:
            assert await redis.execute("SET", "tls-key", "over tls") == b"OK"
            replies = await redis.pipeline([("GET", "tls-key"), ("CLIENT", "INFO")])
            assert replies[0] == b"over tls"
            assert b" db=1 " in replies[1]
            # Cancelled mid-command: closed, replaced; pub/sub over TLS.
            with trio.move_on_after(0.2):
                await redis.execute("BLPOP", "tls-list", 10, timeout=11)
            assert redis.statistics().open_connections == 0
            async with redis.subscribe("tls-ring") as subscription:
                assert await redis.execute("PUBLISH", "tls-ring", "hello") == 1
                assert await subscription.__anext__() == (b"tls-ring", b"hello")
            async with redis.dedicated() as connection:
                assert await connection.pipeline([("PING",), ("ECHO", b"x" * 300_000)]) == [
                    b"PONG",
                    b"x" * 300_000,
                ]


async def test_tls_with_unknown_ca_fails_verification(
    pki: Pki, tls_server: tuple[RedisServer, int]
) -> None:
    _, port = tls_server
    config = RedisConfig(
        host="127.0.0.1",
        port=port,
        tls=True,
        tls_ca=b64(pki.other_ca.cert),
        tls_cert=b64(pki.client.cert),
        tls_key=b64(pki.client.key),
    )
    with trio.fail_after(10):
        async with open_redis(config) as redis:
            with pytest.raises(BrokerUnavailable) as info:
                await redis.execute("PING")
    message = str(info.value)
    assert f"TLS handshake with Redis at 127.0.0.1:{port} failed" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "redis.tls_ca" in message
    assert redis.statistics().open_connections == 0


async def test_tls_client_against_plain_port_fails_clearly(
    pki: Pki, tls_server: tuple[RedisServer, int]
) -> None:
    server, _ = tls_server
    config = RedisConfig(
        url=f"rediss://127.0.0.1:{server.port}", tls_ca=b64(pki.ca.cert), connect_timeout_s=0.3
    )
    with trio.fail_after(10):
        async with open_redis(config) as redis:
            # Redis waits for the end of an inline command that never comes.
            with pytest.raises(BrokerUnavailable) as info:
                await redis.execute("PING")
    message = str(info.value)
    assert f"could not connect to Redis at 127.0.0.1:{server.port} within 0.3s" in message
    assert "check that this port speaks TLS" in message

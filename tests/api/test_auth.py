"""API keys: bearer auth, ownership between keys, admin keys, loopback rule, ``flowqd keys add``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from flowqd import cli
from flowqd.auth import KeyRing, hash_key, is_loopback
from flowqd.errors import ConfigError
from tests.api.conftest import ADMIN_KEY, ALICE_KEY, BOB_KEY, bearer, keyring, make_config, open_api
from tests.daemonproc import base_env

ALICE, BOB, ADMIN = bearer(ALICE_KEY), bearer(BOB_KEY), bearer(ADMIN_KEY)


async def test_missing_or_wrong_key_is_401_json() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            for headers in (
                {},
                bearer("fqd_wrong"),
                {"Authorization": "Basic abc"},
                {"Authorization": "Bearer"},
            ):
                response = await api.client.post(
                    "/api/v1/prediction/echo", json={"question": "q"}, headers=headers
                )
                assert response.status_code == 401, headers
                assert response.headers["www-authenticate"] == "Bearer"
                body = response.json()
                assert body["statusCode"] == 401 and body["success"] is False
                assert "flowqd keys add" in body["message"]
            ok = await api.client.post(
                "/api/v1/prediction/echo", json={"question": "q"}, headers=ALICE
            )
            assert ok.status_code == 200 and ok.json()["text"] == "q"


async def test_open_routes_need_no_key() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            assert (await api.client.get("/api/v1/ping")).text == "pong"
            assert (await api.client.get("/metrics")).status_code == 200
            assert (await api.client.get("/api/v1/openapi.json")).status_code == 200
            # The Flowise SDKs ask this without their key before each prediction.
            assert (await api.client.get("/api/v1/chatflows-streaming/echo")).status_code == 200
            assert (await api.client.get("/api/v1/flows")).status_code == 401


async def test_jobs_belong_to_their_key_and_admins_see_all() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            mine = (
                await api.client.post(
                    "/api/v1/jobs",
                    headers=ALICE,
                    json={"flow": "echo", "inputs": {"question": "a"}},
                )
            ).json()["id"]
            prediction = (
                await api.client.post(
                    "/api/v1/prediction/echo", headers=ALICE, json={"question": "p"}
                )
            ).json()
            theirs = (
                await api.client.post(
                    "/api/v1/jobs", headers=BOB, json={"flow": "echo", "inputs": {"question": "b"}}
                )
            ).json()["id"]
            await api.client.get(f"/api/v1/jobs/{mine}/events", headers=ALICE)
            await api.client.get(f"/api/v1/jobs/{theirs}/events", headers=BOB)
            for job_id in (mine, prediction["executionId"]):
                own = await api.client.get(f"/api/v1/jobs/{job_id}", headers=ALICE)
                assert own.status_code == 200 and own.json()["owner"] == "alice"
                for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/events"):
                    other = await api.client.get(path, headers=BOB)
                    assert other.status_code == 404, path
                    assert "another API key" in other.json()["message"]
                cancel = await api.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=BOB)
                assert cancel.status_code == 404
                assert (
                    await api.client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN)
                ).status_code == 200
            listed = {
                j["id"]
                for j in (await api.client.get("/api/v1/jobs", headers=ALICE)).json()["jobs"]
            }
            assert listed == {mine, prediction["executionId"]}
            everyone = {
                j["id"]
                for j in (await api.client.get("/api/v1/jobs", headers=ADMIN)).json()["jobs"]
            }
            assert everyone == {mine, prediction["executionId"], theirs}


async def test_changing_shared_state_needs_an_admin_key() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring()) as api:
            flow = {"nodes": [{"id": "e", "type": "echo"}], "output": "e"}
            attempts = [
                ("PUT", "/api/v1/flows/new", flow),
                ("DELETE", "/api/v1/flows/echo", None),
                ("GET", "/api/v1/credentials", None),
                ("PUT", "/api/v1/credentials/x", {"value": "v"}),
                ("DELETE", "/api/v1/credentials/x", None),
                ("POST", "/api/v1/queue/pause", None),
                ("POST", "/api/v1/queue/resume", None),
            ]
            for method, path, body in attempts:
                denied = await api.client.request(method, path, json=body, headers=ALICE)
                assert denied.status_code == 403, path
                assert "admin API key" in denied.json()["message"]
            assert (
                await api.client.put("/api/v1/flows/new", json=flow, headers=ADMIN)
            ).status_code == 200
            # Reading is for every key.
            assert (await api.client.get("/api/v1/flows/new", headers=ALICE)).status_code == 200
            assert (await api.client.get("/api/v1/queue", headers=ALICE)).status_code == 200


async def test_anonymous_callers_when_allowed_besides_keys() -> None:
    with trio.fail_after(15):
        async with open_api(keys=keyring(allow_anonymous=True)) as api:
            anonymous = await api.client.post(
                "/api/v1/jobs", json={"flow": "echo", "inputs": {"question": "a"}}
            )
            assert anonymous.status_code == 202
            job_id = anonymous.json()["id"]
            assert (await api.client.get(f"/api/v1/jobs/{job_id}")).status_code == 200
            assert (
                await api.client.get(f"/api/v1/jobs/{job_id}", headers=ALICE)
            ).status_code == 404
            assert (await api.client.post("/api/v1/queue/pause")).status_code == 403


def test_no_keys_means_loopback_only() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    KeyRing.from_config(make_config())  # loopback: fine
    with pytest.raises(ConfigError) as info:
        KeyRing.from_config(make_config("server.host=0.0.0.0"))
    assert "auth.allow_anonymous" in str(info.value) and "flowqd keys add" in str(info.value)
    KeyRing.from_config(make_config("server.host=0.0.0.0", "auth.allow_anonymous=true"))
    entry = f"ops:{hash_key('fqd_x')}:admin"
    ring = KeyRing.from_config(make_config("server.host=0.0.0.0", f"auth.keys={entry}"))
    who = ring.authenticate("Bearer fqd_x")
    assert who is not None and who.name == "ops" and who.admin
    assert ring.authenticate(None) is None


def test_bad_key_entries_are_reported_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_config("auth.keys=fqd_plaintext-key")
    assert "NAME:SHA256HEX" in str(info.value)
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\n\nfqd_pasted-plaintext-key\n")
    with pytest.raises(ConfigError) as info:
        KeyRing.from_config(make_config(f"auth.keys_file={keys_file}"))
    assert "line 3" in str(info.value) and "pasted" not in str(info.value)
    twice = f"ops:{hash_key('a')}"
    keys_file.write_text(f"{twice}\n")
    with pytest.raises(ConfigError, match="configured twice"):
        KeyRing.from_config(make_config(f"auth.keys_file={keys_file}", f"auth.keys={twice}"))


def test_keys_add_prints_the_key_once_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    keys_file = tmp_path / "etc" / "keys"
    assert cli.main(["keys", "add", "alice", "--set", f"auth.keys_file={keys_file}"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("fqd_") and len(key) > 40
    stored = keys_file.read_text()
    assert key not in stored and stored == f"alice:{hash_key(key)}\n"
    assert keys_file.stat().st_mode & 0o077 == 0
    assert cli.main(["keys", "add", "root", "--admin", "--file", str(keys_file)]) == 0
    root_key = capsys.readouterr().out.strip()
    ring = KeyRing.from_config(make_config(f"auth.keys_file={keys_file}"))
    alice, root = ring.authenticate(f"Bearer {key}"), ring.authenticate(f"Bearer {root_key}")
    assert alice is not None and (alice.name, alice.admin) == ("alice", False)
    assert root is not None and (root.name, root.admin) == ("root", True)
    assert cli.main(["keys", "add", "alice", "--file", str(keys_file)]) == 2
    assert "already exists" in capsys.readouterr().err
    # Without a keys file the entry to paste is printed, the key still only once.
    assert cli.main(["keys", "add", "carol"]) == 0
    out, err = capsys.readouterr()
    assert f"carol:{hash_key(out.strip())}" in err and out.strip() not in err


def test_daemon_refuses_a_public_address_without_keys() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowqd",
            "--role",
            "all",
            "--set",
            "server.host=0.0.0.0",
            "--set",
            "server.port=0",
            "--set",
            "worker.health_port=0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=base_env(),
    )
    assert result.returncode == 2, result.stderr
    assert "auth.allow_anonymous" in result.stderr


# --- What a web page may make a browser send (DNS rebinding, cross-site writes) ---


async def test_host_header_must_name_this_server() -> None:
    """DNS rebinding: evil.example made to resolve to 127.0.0.1 is refused by name."""
    with trio.fail_after(15):
        async with open_api() as api:
            port = api.url.rsplit(":", 1)[1]
            for host in (
                "evil.example",
                f"evil.example:{port}",
                "127.0.0.1.evil.example",
                "10.0.0.1",
            ):
                for method, path, body in (
                    ("GET", "/api/v1/queue", None),
                    ("GET", "/api/v1/ping", None),
                    ("PUT", "/api/v1/credentials/x", {"value": "v"}),
                    ("POST", "/api/v1/queue/pause", None),
                ):
                    response = await api.client.request(
                        method, path, json=body, headers={"Host": host}
                    )
                    assert response.status_code == 421, (host, path, response.text)
                    assert "server.allowed_hosts" in response.json()["message"]
            assert not await api.broker.control.is_paused()
            assert (await api.client.get("/api/v1/credentials")).json() == {"credentials": []}
            for host in (
                f"127.0.0.1:{port}",
                f"localhost:{port}",
                "LOCALHOST",
                f"[::1]:{port}",
                "localhost.",
            ):
                ok = await api.client.get("/api/v1/queue", headers={"Host": host})
                assert ok.status_code == 200, (host, ok.text)


async def test_allowed_hosts_and_listening_on_every_interface() -> None:
    with trio.fail_after(15):
        async with open_api('server.allowed_hosts=["api.example", "[::1]"]') as api:
            named = await api.client.get("/api/v1/queue", headers={"Host": "api.example:443"})
            assert named.status_code == 200
            bracketed = await api.client.get("/api/v1/queue", headers={"Host": "[::1]:8080"})
            assert bracketed.status_code == 200
            loopback = await api.client.get("/api/v1/queue", headers={"Host": "localhost"})
            assert loopback.status_code == 421  # the list replaces the defaults
        async with open_api('server.allowed_hosts=["*"]') as api:
            assert (
                await api.client.get("/api/v1/queue", headers={"Host": "evil.example"})
            ).status_code == 200
        # On 0.0.0.0 clients use whatever name reaches the machine (open_api still
        # binds loopback; the rule follows server.host).
        async with open_api("server.host=0.0.0.0", keys=keyring()) as api:
            anywhere = await api.client.get(
                "/api/v1/queue", headers={"Host": "box.lan:3000", **ALICE}
            )
            assert anywhere.status_code == 200


async def test_cross_origin_writes_are_403_and_same_origin_writes_pass() -> None:
    with trio.fail_after(15):
        async with open_api() as api:
            port = api.url.rsplit(":", 1)[1]
            for headers in (
                {"Origin": "http://evil.example"},
                {"Origin": f"http://localhost:{int(port) + 1}"},  # another port
                {"Origin": "null"},  # a sandboxed frame, a file:// page
                {"Sec-Fetch-Site": "cross-site"},
            ):
                for method, path in (
                    ("POST", "/api/v1/queue/pause"),
                    ("POST", "/api/v1/prediction/echo"),
                    ("POST", "/api/v1/jobs"),
                    ("PUT", "/api/v1/flows/evil"),
                    ("DELETE", "/api/v1/flows/echo"),
                ):
                    response = await api.client.request(
                        method, path, json={"question": "q", "flow": "echo"}, headers=headers
                    )
                    assert response.status_code == 403, (headers, path, response.text)
                    message = response.json()["message"]
                    assert "server.allowed_origins" in message and "own origin" in message
            assert not await api.broker.control.is_paused()
            assert (await api.client.get("/api/v1/flows/echo")).status_code == 200
            # Reads are not refused: without CORS the page cannot read the answer.
            read = await api.client.get("/api/v1/queue", headers={"Origin": "http://evil.example"})
            assert read.status_code == 200
            # The server's own page (the dashboard) and clients without Origin (curl, SDKs).
            for headers in (
                {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
                {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
                {},
            ):
                done = await api.client.post(
                    "/api/v1/prediction/echo", json={"question": "q"}, headers=headers
                )
                assert done.status_code == 200, (headers, done.text)
            paused = await api.client.post("/api/v1/queue/pause")
            assert paused.status_code == 200 and await api.broker.control.is_paused()


async def test_allowed_origins_let_a_listed_page_write() -> None:
    with trio.fail_after(15):
        async with open_api('server.allowed_origins=["https://app.example"]') as api:
            listed = await api.client.post(
                "/api/v1/prediction/echo",
                json={"question": "q"},
                headers={"Origin": "https://app.example:443", "Sec-Fetch-Site": "cross-site"},
            )
            assert listed.status_code == 200, listed.text
            other = await api.client.post(
                "/api/v1/prediction/echo",
                json={"question": "q"},
                headers={"Origin": "http://app.example"},
            )
            assert other.status_code == 403
        async with open_api('server.allowed_origins=["*"]') as api:
            anyone = await api.client.post(
                "/api/v1/prediction/echo",
                json={"question": "q"},
                headers={"Origin": "http://evil.example"},
            )
            assert anyone.status_code == 200


async def test_a_page_cannot_drive_the_api_with_a_simple_request() -> None:
    """What a page on another site can send without a CORS preflight, end to end:
    a text/plain body. Refused for its origin, and for its type from any origin."""
    with trio.fail_after(15):
        async with open_api() as api:
            simple = await api.client.post(
                "/api/v1/jobs",
                content=b'{"flow": "echo"}',
                headers={
                    "Content-Type": "text/plain;charset=UTF-8",
                    "Origin": "http://evil.example",
                    "Sec-Fetch-Site": "cross-site",
                },
            )
            assert simple.status_code == 403
            same_origin = await api.client.post(
                "/api/v1/jobs",
                content=b'{"flow": "echo"}',
                headers={"Content-Type": "text/plain;charset=UTF-8"},
            )
            assert same_origin.status_code == 415
            assert "text/plain" in same_origin.json()["message"]
            assert sum((await api.broker.control.counts()).values()) == 0

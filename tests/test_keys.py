"""``flowqd keys list`` and ``revoke``, and running mains following ``auth.keys_file``.

The CLI runs in process (``cli.main``); the mains are real processes, and a
change to the key file must reach them without a restart. No sleeps: each
wait polls its condition under a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from flowqd import cli
from flowqd.api.dashboard import COOKIE
from flowqd.auth import KeyRing, hash_key
from flowqd.errors import ConfigError
from flowqd.keys_command import _locked, _replace
from flowqd.sessions import SessionSigner
from tests.api.conftest import bearer, make_config
from tests.daemonproc import base_env, start_daemon

CSRF = {"X-Flowqd-CSRF": "1", "Sec-Fetch-Site": "same-origin"}


def add(keys_file: Path, name: str, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    assert cli.main(["keys", "add", name, "--file", str(keys_file), *flags]) == 0
    return capsys.readouterr().out.strip()


def test_list_shows_names_admin_flags_and_origins_never_hashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "keys"
    alice = add(keys_file, "alice", capsys)
    root = add(keys_file, "root", capsys, "--admin")
    config = tmp_path / "flowqd.toml"
    config.write_text(f'[auth]\nkeys = ["ci:{hash_key("fqd_ci")}"]\nkeys_file = "{keys_file}"\n')
    monkeypatch.delenv("FLOWQD_AUTH__KEYS", raising=False)

    assert cli.main(["keys", "list", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "ADMIN", "DEFINED", "IN"]
    assert lines[1].split() == ["ci", "no", "auth.keys", "in", str(config)]
    assert lines[2].split() == ["alice", "no", str(keys_file)]
    assert lines[3].split() == ["root", "yes", str(keys_file)]
    for secret in (alice, root, hash_key(alice), hash_key(root), hash_key("fqd_ci")):
        assert secret not in table

    monkeypatch.setenv("FLOWQD_AUTH__KEYS", f"env-ci:{hash_key('fqd_env')}:admin")
    assert cli.main(["keys", "list", "--json", "--config", str(config)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {
            "name": "env-ci",
            "admin": True,
            "source": "config",
            "where": "environment variable FLOWQD_AUTH__KEYS",
        },
        {"name": "alice", "admin": False, "source": "keys_file", "where": str(keys_file)},
        {"name": "root", "admin": True, "source": "keys_file", "where": str(keys_file)},
    ]


def test_revoke_rewrites_the_file_atomically_and_keeps_its_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# alice: the CI runner\n\n")
    alice = add(keys_file, "alice", capsys)
    bob = add(keys_file, "bob", capsys, "--admin")
    keys_file.chmod(0o640)
    inode = keys_file.stat().st_ino

    assert cli.main(["keys", "revoke", "alice", "--file", str(keys_file)]) == 0
    assert "removed" in capsys.readouterr().err
    # A new file renamed into place: a reader never sees it half written.
    assert keys_file.stat().st_ino != inode
    assert keys_file.stat().st_mode & 0o777 == 0o640
    assert keys_file.read_text() == f"# alice: the CI runner\n\nbob:{hash_key(bob)}:admin\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]  # no temp file left behind
    ring = KeyRing.from_config(make_config(f"auth.keys_file={keys_file}"))
    assert ring.authenticate(f"Bearer {alice}") is None
    assert ring.authenticate(f"Bearer {bob}") is not None

    assert cli.main(["keys", "revoke", "alice", "--file", str(keys_file)]) == 2
    assert "no key named 'alice'; the keys are: bob" in capsys.readouterr().err


def test_revoke_refuses_a_key_of_the_config_and_says_where_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "keys"
    add(keys_file, "alice", capsys)
    monkeypatch.setenv("FLOWQD_AUTH__KEYS", f"ci:{hash_key('fqd_ci')}")
    before = keys_file.read_text()
    assert cli.main(["keys", "revoke", "ci", "--file", str(keys_file)]) == 2
    err = capsys.readouterr().err
    assert "environment variable FLOWQD_AUTH__KEYS" in err and "remove its entry there" in err
    overridden = ["--set", f"auth.keys=ops:{hash_key('fqd_ops')}"]
    assert cli.main(["keys", "revoke", "ops", "--file", str(keys_file), *overridden]) == 2
    assert "defined in --set auth.keys" in capsys.readouterr().err
    assert keys_file.read_text() == before


def _holds_open(pid: int, path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def test_an_add_waiting_on_a_revoke_lands_in_the_new_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys"
    add(keys_file, "alice", capsys)
    # Hold the lock a revoke holds while an add in another process opens the
    # file and waits for it; the revoke's rename must not swallow the add's line.
    with _locked(keys_file, create=False) as held:
        adder = subprocess.Popen(
            [sys.executable, "-m", "flowqd", "keys", "add", "bob", "--file", str(keys_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=base_env(),
        )
        deadline = time.monotonic() + 20
        while not _holds_open(adder.pid, keys_file):
            assert adder.poll() is None and time.monotonic() < deadline, "add never waited"
            time.sleep(0.01)
        _replace(keys_file, held.read().replace("alice:", "carol:"))
    out, err = adder.communicate(timeout=30)
    assert adder.returncode == 0, err
    lines = keys_file.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["carol", "bob"]
    assert lines[1] == f"bob:{hash_key(out.strip())}"


def test_dashboard_with_several_processes_and_keys_needs_the_secret(tmp_path: Path) -> None:
    redis = {"REDIS_URL": "redis://127.0.0.1:1"}
    keyed = ("dashboard.enabled=true", "server.processes=2", f"auth.keys_file={tmp_path}/k")
    with pytest.raises(ConfigError) as info:
        SessionSigner.from_config(make_config(*keyed, environ=redis))
    assert "security.secret_key" in str(info.value) and "server.processes = 2" in str(info.value)
    # With the secret, or one process, or the dashboard off, nothing to refuse.
    SessionSigner.from_config(make_config(*keyed, "security.secret_key=s", environ=redis))
    SessionSigner.from_config(make_config(*keyed[:1], keyed[2]))
    SessionSigner.from_config(make_config(*keyed[1:], environ=redis))


def _fresh_client() -> httpx.AsyncClient:
    # A new connection per request: with server.processes = 2 the kernel
    # spreads them over both processes, and each must follow the file.
    return httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))


async def _until_every_answer(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], want: int, *, seconds: float
) -> float:
    """Seconds until ``want`` answers GET /api/v1/jobs 20 times in a row."""
    start = trio.current_time()
    with trio.fail_after(seconds):
        streak = 0
        while streak < 20:
            status = (await client.get(f"{url}/api/v1/jobs", headers=headers)).status_code
            streak = streak + 1 if status == want else 0
            if not streak:
                await trio.sleep(0.05)
    return trio.current_time() - start


@pytest.mark.parametrize("processes", [1, 2])
async def test_running_mains_follow_add_and_revoke_without_a_restart(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    processes: int,
) -> None:
    keys_file = tmp_path / "keys"
    alice = add(keys_file, "alice", capsys)
    env = {"FLOWQD_SECRET_KEY": "shared-test-secret"}
    role = "all"
    if processes > 1:  # several API processes need Redis
        role = "main"
        env |= {
            "REDIS_URL": request.getfixturevalue("redis_url"),
            "QUEUE_NAME": request.getfixturevalue("queue_name"),
        }
    args = ["--role", role, "--set", f"auth.keys_file={keys_file}"]
    args += ["--set", "dashboard.enabled=true", "--set", f"server.processes={processes}"]
    with trio.fail_after(60):
        async with start_daemon(args, env=env, cwd=str(tmp_path)) as main, _fresh_client() as c:
            url = main.api
            signed = await c.post(f"{url}/admin/queues/session", json={"key": alice}, headers=CSRF)
            assert signed.status_code == 200, signed.text
            session = {"Cookie": f"{COOKIE}={signed.cookies[COOKIE]}", **CSRF}
            await _until_every_answer(c, url, bearer(alice), 200, seconds=5)
            await _until_every_answer(c, url, session, 200, seconds=5)

            bob = add(keys_file, "bob", capsys)
            await _until_every_answer(c, url, bearer(bob), 200, seconds=5)
            assert cli.main(["keys", "revoke", "alice", "--file", str(keys_file)]) == 0
            took = await _until_every_answer(c, url, bearer(alice), 401, seconds=5)
            assert took < 3, took
            # Its dashboard session ended with it, on every process.
            await _until_every_answer(c, url, session, 401, seconds=2)
            await _until_every_answer(c, url, bearer(bob), 200, seconds=2)
            assert "removed: alice" in main.text()

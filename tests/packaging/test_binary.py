"""The one-file binary, built by packaging/build.sh, as an operator runs it.

Everything runs from a temporary folder with an environment cleared of
flowqd settings, so nothing can come from this checkout or its virtualenv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest
import trio

from flowqd import __version__
from tests.daemonproc import base_env, start_daemon
from tests.packaging.notifysock import listen
from tests.redisproc import RedisServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PLUGIN = ROOT / "plugins" / "flowqd-example" / "flowqd_example.py"
# A built-in node feeding a node of the plugin file: both must work inside the binary.
FLOW = {
    "id": "greet",
    "nodes": [
        {"id": "hello", "type": "template", "params": {"template": "Hello, {question}!"}},
        {"id": "back", "type": "reverse", "params": {"upper": True}, "inputs": {"text": "hello"}},
    ],
    "output": "back",
}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config file, a plugin folder and a flow folder, as under /etc/flowqd."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(EXAMPLE_PLUGIN, plugins / "reverser.py")
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "greet.json").write_text(json.dumps(FLOW))
    (tmp_path / "flowqd.toml").write_text(
        f'[plugins]\npaths = ["{plugins}"]\n\n[flows]\npaths = ["{flows}"]\n'
    )
    return tmp_path


def run(
    binary: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        env=base_env(env),
        cwd=cwd,
        timeout=120,
    )


async def predict(api: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{api}/api/v1/prediction/greet", json={"question": "world"})


def package_data_files() -> set[str]:
    """Every file pyproject's package-data ships with flowqd, as bundle paths."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["flowqd"]
    package = ROOT / "flowqd"
    return {
        f"flowqd/{path.relative_to(package)}"
        for pattern in patterns
        for path in package.glob(pattern)
        if path.is_file()
    }


def test_bundle_holds_every_module_data_file_and_hiredis(binary: Path) -> None:
    from PyInstaller.archive.readers import CArchiveReader

    archive = CArchiveReader(str(binary))
    files = set(archive.toc)
    data = package_data_files()
    assert any(name.startswith("flowqd/queue/lua/") for name in data)
    assert data <= files, f"missing from the binary: {sorted(data - files)}"
    assert any(name.startswith("hiredis/hiredis.") and name.endswith(".so") for name in files)
    modules = set(archive.open_embedded_archive("PYZ.pyz").toc)
    ours = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "flowqd").rglob("*.py")
    }
    assert ours <= modules, f"missing from the binary: {sorted(ours - modules)}"
    assert not {"pytest", "hypothesis", "mypy", "flowqd_example"} & modules


def test_version(binary: Path, tmp_path: Path) -> None:
    result = run(binary, "--version", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"flowqd {__version__}")


def test_check_config_reads_the_file(binary: Path, site: Path) -> None:
    result = run(binary, "check-config", "--config", str(site / "flowqd.toml"), cwd=site)
    assert result.returncode == 0, result.stderr
    assert f'paths = ["{site / "plugins"}"]' in result.stdout.splitlines()
    bad = run(binary, "check-config", "--set", "worker.concurrency=lots", cwd=site)
    assert bad.returncode == 2
    assert bad.stderr.startswith("flowqd: error: ") and "worker.concurrency" in bad.stderr


def test_plugins_lists_built_ins_and_the_plugin_file_only(binary: Path, site: Path) -> None:
    result = run(binary, "plugins", "--config", str(site / "flowqd.toml"), cwd=site)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("echo", "delay", "template", "http", "llm"):
        assert f"  flowqd.executors.{name}  (built-in)" in lines
    assert f"  reverser  (file {site / 'plugins' / 'reverser.py'})" in lines
    assert any(line.startswith("  reverse  [reverser]") for line in lines)
    # flowqd-example is installed in the test virtualenv by entry point; the
    # binary must not see it (it only sees what it bundles).
    assert "entry point" not in result.stdout


async def test_role_all_pings_runs_a_flow_and_exits_0_on_sigterm(binary: Path, site: Path) -> None:
    args = ["--role", "all", "--config", str(site / "flowqd.toml")]
    with trio.fail_after(60):
        async with start_daemon(args, cwd=str(site), command=[str(binary)]) as daemon:
            assert "broker=memory" in daemon.text()
            async with httpx.AsyncClient(timeout=10) as client:
                ping = await client.get(f"{daemon.api}/api/v1/ping")
                assert (ping.status_code, ping.text) == (200, "pong")
                assert (await client.get(f"{daemon.health}/readyz")).status_code == 200
            answer = await predict(daemon.api)
            assert answer.status_code == 200, answer.text
            assert answer.json()["text"] == "!DLROW ,OLLEH"
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait(15) == 0
            assert "stopped cleanly" in daemon.text()


async def test_main_and_worker_binaries_run_a_job_through_redis(
    binary: Path, site: Path, redis_server: RedisServer, queue_name: str
) -> None:
    env = {"REDIS_URL": redis_server.url, "QUEUE_NAME": queue_name}
    config = ["--config", str(site / "flowqd.toml")]
    command = [str(binary)]
    with trio.fail_after(90):
        async with (
            start_daemon(
                ["--role", "main", *config], env=env, cwd=str(site), command=command
            ) as main,
            start_daemon(
                ["--role", "worker", *config], env=env, cwd=str(site), command=command
            ) as worker,
        ):
            assert "broker=redis" in main.text() and "broker=redis" in worker.text()
            answer = await predict(main.api)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["text"] == "!DLROW ,OLLEH"
            # The main role runs no jobs: the answer came from the worker.
            assert "api" not in worker.endpoints and "health" not in main.endpoints
            worker.signal(signal.SIGTERM)
            main.signal(signal.SIGTERM)
            assert await worker.wait(20) == 0
            assert await main.wait(20) == 0


async def test_sigint_to_the_process_group_drains_once(binary: Path, site: Path) -> None:
    """Ctrl-C in a terminal signals the whole group: bootloader and daemon; one drain, exit 0."""
    args = ["--role", "all", "--config", str(site / "flowqd.toml")]
    # setsid (not a group leader, so it execs in place): the binary leads its own group.
    command = ["setsid", str(binary)]
    with trio.fail_after(60):
        async with start_daemon(args, cwd=str(site), command=command) as daemon:
            assert os.getpgid(daemon.process.pid) == daemon.process.pid
            os.killpg(daemon.process.pid, signal.SIGINT)
            assert await daemon.wait(15) == 0
            assert "draining" in daemon.text()
            assert "stopped at once" not in daemon.text()


async def test_notifies_systemd_from_the_bootloaders_child(
    binary: Path, site: Path, socket_path: str
) -> None:
    """As systemd runs it: WATCHDOG_PID is the main PID, the bootloader; the daemon is its child."""
    args = ["--role", "all", "--config", str(site / "flowqd.toml")]
    # exec keeps the shell's pid, so WATCHDOG_PID is the bootloader's, as systemd sets it.
    command = ["sh", "-c", 'export WATCHDOG_PID=$$; exec "$0" "$@"', str(binary)]
    env = {"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "200000"}
    with trio.fail_after(60):
        async with (
            listen(socket_path) as listener,
            start_daemon(args, env=env, cwd=str(site), command=command) as daemon,
        ):
            ready = await listener.until("READY")
            assert daemon.api in ready["STATUS"]
            for _ in range(2):
                await listener.until("WATCHDOG")
            daemon.signal(signal.SIGTERM)
            await listener.until("STOPPING")
            assert await daemon.wait(15) == 0
        assert listener.keys("READY", "STOPPING") == ["READY", "STOPPING"]
        assert listener.messages[0] == {"WATCHDOG": "1"}

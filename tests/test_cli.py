"""The command line as a user meets it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import trio

from flowqd import __version__
from flowqd.config import load_config
from flowqd.jobs import JobSpec, JobStatus
from flowqd.queue import open_broker
from tests.daemonproc import base_env


def flowqd(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowqd", *args],
        capture_output=True,
        text=True,
        env=base_env(env),
        cwd=cwd,
        timeout=60,
    )


def test_version() -> None:
    result = flowqd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"flowqd {__version__}"


def test_unknown_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[worker]\nconcurency = 4\n")
    result = flowqd("--config", str(config), "check-config")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"flowqd: error: {config}: worker.concurency: unknown key")
    assert "Traceback" not in result.stderr


def test_wrong_type_is_one_line_and_exit_2_when_running(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nport = "http"\n')
    result = flowqd("--config", str(config), "--role", "all")
    assert result.returncode == 2
    assert result.stderr == (
        f"flowqd: error: {config}: server.port: expected an integer, got 'http'\n"
    )


def test_worker_without_redis_names_the_setting(tmp_path: Path) -> None:
    result = flowqd("--role", "worker", cwd=tmp_path)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "redis.url" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    env = {
        "REDIS_URL": "redis://flow:hunter2@10.0.0.5:6380/1",
        "WORKER_CONCURRENCY": "64",
        "FLOWQD_SECRET_KEY": "do-not-print",
    }
    result = flowqd("check-config", "--role", "worker", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hunter2" not in out and "do-not-print" not in out
    assert 'url = "redis://flow:***@10.0.0.5:6380/1"' in out
    assert "concurrency = 64" in out
    assert 'role = "worker"' in out
    assert "broker in use: redis" in out


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[worker]\nconcurrency = -1\nhealth_port = 1e9\n")
    result = flowqd("check-config", "--config", str(config), env={"PORT": "x"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert all(line.startswith("flowqd: error: ") for line in lines)


def test_check_config_reports_what_start_up_would_refuse(tmp_path: Path) -> None:
    # Serving beyond loopback without API keys, and a plugin folder that does
    # not exist: check-config says so instead of printing a config that fails.
    result = flowqd(
        "check-config",
        "--role",
        "all",
        "--set",
        "server.host=0.0.0.0",
        "--set",
        "security.secret_key_file=/nonexistent/key",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "auth.allow_anonymous" in result.stderr
    assert "security.secret_key_file" in result.stderr


def test_mode_queue_without_redis_is_refused_like_role_worker(tmp_path: Path) -> None:
    result = flowqd("--role", "all", env={"MODE": "queue"}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "flowqd: error: MODE=queue selects the Redis broker, but no Redis is configured: set "
        "REDIS_URL (or redis.url in flowqd.toml), e.g. REDIS_URL=redis://127.0.0.1:6379/0; only "
        "--role all without MODE runs on the embedded broker (one process, nothing durable)\n"
    )


def test_misspelt_key_in_environment_and_flag_lists_the_keys(tmp_path: Path) -> None:
    result = flowqd(
        "check-config",
        "--set",
        "worker.concurency=5",
        cwd=tmp_path,
        env={"FLOWQD_WORKER__CONCURENCY": "5"},
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert "worker.concurency: unknown key; known keys in [worker]: concurrency," in line
        assert "did you mean worker.concurrency" in line


@contextmanager
def held_port() -> Iterator[int]:
    """A loopback port another program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_api_port_in_use_names_address_and_setting(tmp_path: Path) -> None:
    with held_port() as port:
        result = flowqd(
            "--role",
            "all",
            "--set",
            f"server.port={port}",
            "--set",
            "worker.health_port=0",
            cwd=tmp_path,
        )
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if "ERROR" in x]
    assert line.endswith(
        f"cannot start: cannot listen on 127.0.0.1:{port} for the HTTP API: port {port} is "
        "already in use by another process (another flowqd?); stop it, or choose another port "
        f"with server.port in flowqd.toml, PORT={port + 1} or --set server.port={port + 1}"
    )
    assert "Traceback" not in result.stderr


def test_health_port_in_use_names_address_and_setting(tmp_path: Path) -> None:
    with held_port() as port:
        result = flowqd(
            "--role", "all", "--set", "server.port=0", cwd=tmp_path, env={"WORKER_PORT": str(port)}
        )
    assert result.returncode == 2
    assert (
        f"cannot listen on 127.0.0.1:{port} for the worker's health server: port {port} is "
        "already in use"
    ) in result.stderr
    assert f"worker.health_port in flowqd.toml, WORKER_PORT={port + 1}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_start_that_fails_on_a_taken_port_claims_no_job(
    tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    # A worker that claimed before the API port failed would leave its jobs
    # locked until they count as stalled.
    config = load_config(environ={"REDIS_URL": redis_url, "QUEUE_NAME": queue_name})
    async with open_broker(config) as broker:
        [job_id] = await broker.jobs.enqueue([JobSpec(flow_id="echo", flow_version=1)])
        with held_port() as port:
            result = await trio.to_thread.run_sync(
                partial(
                    flowqd,
                    "--role",
                    "all",
                    "--set",
                    f"server.port={port}",
                    "--set",
                    "worker.health_port=0",
                    cwd=tmp_path,
                    env={"REDIS_URL": redis_url, "QUEUE_NAME": queue_name},
                )
            )
        assert result.returncode == 2, result.stderr
        job = await broker.jobs.get_job(job_id)
        assert job is not None
        assert job.status is JobStatus.WAITING
        assert (await broker.control.counts())[JobStatus.ACTIVE] == 0

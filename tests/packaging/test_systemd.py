"""The systemd units in packaging/systemd: valid for systemd, and saying what deploy.md says."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flowqd.config import WorkerConfig
from flowqd.daemon import TEARDOWN_MARGIN_S
from tests.daemonproc import base_env

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
BINARY = "/usr/local/bin/flowqd"
SERVICES = ("flowqd-main.service", "flowqd-worker@.service")
# What `systemd-analyze verify` is asked about: a template is verified through an instance.
VERIFY = ("flowqd-main.service", "flowqd-worker@5566.service", "flowqd.target")


def directives(unit: str) -> dict[str, list[str]]:
    """``Section.Key`` -> every value it is given, in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def one(unit: str, key: str) -> str:
    values = directives(unit)[key]
    assert len(values) == 1, f"{unit}: {key} given {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    assert value.isdigit(), f"write plain seconds, got {value!r}"
    return float(value)


@pytest.fixture
def verifiable_units(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at an executable that exists here.

    `systemd-analyze verify` refuses a unit whose binary is missing, and
    ``--root`` would need a whole system tree.
    """
    stub = tmp_path / "flowqd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    folder = tmp_path / "units"
    folder.mkdir()
    for unit in (*SERVICES, "flowqd.target"):
        text = (UNITS / unit).read_text()
        (folder / unit).write_text(text.replace(BINARY, str(stub)))
    return folder


@pytest.mark.parametrize("unit", VERIFY)
def test_systemd_analyze_verify_is_clean(verifiable_units: Path, unit: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: install Debian's systemd package (CI does)")
    result = subprocess.run(
        [analyze, "verify", str(verifiable_units / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=verifiable_units,
    )
    # Unknown keys and bad values are only warnings on stderr, with exit 0.
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_verify_catches_a_misspelled_key(verifiable_units: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: install Debian's systemd package (CI does)")
    unit = verifiable_units / "flowqd-main.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "Unknown key" in result.stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_service_is_notify_with_watchdog_and_hardening(unit: str) -> None:
    d = directives(unit)
    expected = {
        "Service.Type": "notify",
        # The one-file binary's daemon is the bootloader's child.
        "Service.NotifyAccess": "all",
        # Only the bootloader gets SIGTERM; it forwards it once.
        "Service.KillMode": "mixed",
        "Service.User": "flowqd",
        "Service.Group": "flowqd",
        "Service.NoNewPrivileges": "yes",
        "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "yes",
        "Service.PrivateTmp": "yes",
        "Service.StateDirectory": "flowqd",
        "Service.EnvironmentFile": "-/etc/flowqd/flowqd.env",
        "Service.RestartPreventExitStatus": "2",
        "Install.WantedBy": "flowqd.target",
        "Unit.PartOf": "flowqd.target",
    }
    assert {key: one(unit, key) for key in expected} == expected
    assert seconds(one(unit, "Service.WatchdogSec")) > 0
    command = shlex.split(one(unit, "Service.ExecStart"))
    assert command[0] == BINARY
    assert command[command.index("--config") + 1] == "/etc/flowqd/flowqd.toml"
    assert "Service.CapabilityBoundingSet" in d


@pytest.mark.parametrize("unit", SERVICES)
def test_stop_timeout_outlasts_the_drain(unit: str) -> None:
    drain = WorkerConfig().shutdown_grace_s + TEARDOWN_MARGIN_S
    assert seconds(one(unit, "Service.TimeoutStopSec")) > drain


def test_main_and_worker_run_their_roles() -> None:
    main = shlex.split(one("flowqd-main.service", "Service.ExecStart"))
    worker = shlex.split(one("flowqd-worker@.service", "Service.ExecStart"))
    assert main[main.index("--role") + 1] == "main"
    assert worker[worker.index("--role") + 1] == "worker"


def test_worker_instance_name_is_its_health_port_whatever_the_environment(
    tmp_path: Path,
) -> None:
    """Run the worker unit's ExecStart (as systemd expands it) up to check-config."""
    command = shlex.split(one("flowqd-worker@.service", "Service.ExecStart").replace("%i", "5599"))
    config = tmp_path / "flowqd.toml"
    config.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\n\n[worker]\nhealth_port = 7000\n')
    command[command.index("--config") + 1] = str(config)
    # An EnvironmentFile setting WORKER_PORT must not move every instance to one port.
    result = subprocess.run(
        [sys.executable, "-m", "flowqd", *command[1:], "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env=base_env({"WORKER_PORT": "1234"}),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "health_port = 5599" in result.stdout.splitlines()


def test_target_is_enabled_at_boot_and_workers_default_to_5566() -> None:
    assert one("flowqd.target", "Install.WantedBy") == "multi-user.target"
    assert one("flowqd-worker@.service", "Install.DefaultInstance") == "5566"

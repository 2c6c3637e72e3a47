"""Builds the one-file binary once per session, for the tests marked slow."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dist/flowqd`` built by ``packaging/build.sh`` into a temporary folder."""
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed; pip install -e '.[test]' (or '.[packaging]')")
    out = tmp_path_factory.mktemp("binary")
    result = subprocess.run(
        [
            "bash",
            str(ROOT / "packaging" / "build.sh"),
            "--distpath",
            str(out / "dist"),
            "--workpath",
            str(out / "work"),
        ],
        env={**os.environ, "PYTHON": sys.executable},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    return out / "dist" / "flowqd"


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A path for a NOTIFY_SOCKET (tmp_path can exceed the 108-byte limit of unix sockets)."""
    with tempfile.TemporaryDirectory(prefix="fqn") as folder:
        yield os.path.join(folder, "notify")

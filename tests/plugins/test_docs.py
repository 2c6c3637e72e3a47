"""docs/plugins.md runs as written: its plugin, its tests and its pyproject."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowqd.config import PluginsConfig
from flowqd.plugins import collect_executors, load_plugins
from flowqd.testing import run_flow_document

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
BLOCK = re.compile(r'^```(\w+) title="([^"]+)"\n(.*?)^```$', re.MULTILINE | re.DOTALL)


def blocks() -> dict[str, str]:
    return {title: code for _lang, title, code in BLOCK.findall(DOC.read_text())}


@pytest.fixture
def doc_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    found = blocks()
    assert set(found) == {"shout.py", "test_shout.py", "pyproject.toml"}
    for title, code in found.items():
        (tmp_path / title).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("shout", "test_shout"):
        sys.modules.pop(name, None)


async def test_the_guides_tests_pass(doc_files: Path) -> None:
    module = importlib.import_module("test_shout")
    tests = [fn for name, fn in vars(module).items() if name.startswith("test_")]
    assert len(tests) == 4
    for test in tests:
        assert inspect.iscoroutinefunction(test)
        await test()


async def test_the_guides_plugin_loads_from_a_plugins_folder(doc_files: Path) -> None:
    (doc_files / "test_shout.py").unlink()  # only the plugin in the plugins folder
    (doc_files / "pyproject.toml").unlink()
    pm = load_plugins(PluginsConfig(paths=[str(doc_files)]))
    assert pm.get_plugin("shout") is not None
    document = {
        "id": "f",
        "nodes": [
            {"id": "s", "type": "shout", "params": {"suffix": "?"}, "inputs": {"text": "$question"}}
        ],
        "output": "s",
    }
    result, _ = await run_flow_document(document, "really", executors=collect_executors(pm))
    assert result.output == "REALLY?"


def test_the_guides_pyproject_declares_the_entry_point(doc_files: Path) -> None:
    project = tomllib.loads((doc_files / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["flowqd"] == {"shout": "shout"}


def test_the_guides_reference_matches_the_hookspecs() -> None:
    from flowqd import hookspecs

    text = DOC.read_text()
    for name, fn in vars(hookspecs).items():
        if hasattr(fn, "flowqd_spec"):
            assert f"### `{name}(" in text, f"docs/plugins.md does not document {name}"

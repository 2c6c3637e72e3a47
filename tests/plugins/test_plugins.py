"""Plugin discovery: built-ins, entry points, modules, plugin folders, disable, errors."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import attrs
import pluggy
import pytest

import flowqd
from flowqd import Executor, NodeContext, PluginError, hookimpl
from flowqd.config import PluginsConfig
from flowqd.plugins import (
    BUILTINS,
    collect_executors,
    describe_plugins,
    load_plugins,
    register_plugin,
)
from flowqd.testing import run_flow_document

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "plugins" / "flowqd-example"
REVERSE_FLOW = {
    "id": "rev",
    "nodes": [
        {"id": "r", "type": "reverse", "params": {"upper": True}, "inputs": {"text": "$question"}}
    ],
    "output": "r",
}


@pytest.fixture(scope="module")
def example_installed() -> None:
    names = {ep.name for ep in entry_points(group="flowqd")}
    assert "example" in names, (
        "the example plugin is not installed: pip install -e plugins/flowqd-example "
        "(scripts/test.sh does)"
    )


def write_plugin(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


PLUGIN_HEADER = """
    import attrs
    from flowqd import Executor, hookimpl

    @attrs.frozen
    class P:
        pass

    async def run(ctx):
        return ctx.node_id
"""


def test_builtins_are_explicit_imports_registered_as_plugins() -> None:
    pm = load_plugins(PluginsConfig(disable=["example"]))
    names = [name for name, plugin in pm.list_name_plugin() if plugin is not None]
    assert names == [m.__name__ for m in BUILTINS]
    assert sorted(collect_executors(pm)) == [
        "condition",
        "delay",
        "echo",
        "http",
        "llm",
        "template",
    ]


async def test_example_plugin_through_its_entry_point(example_installed: None) -> None:
    pm = load_plugins(PluginsConfig())
    assert pm.get_plugin("example") is sys.modules["flowqd_example"]
    executors = collect_executors(pm)
    result, events = await run_flow_document(REVERSE_FLOW, "stressed", executors=executors)
    assert result.output == "DESSERTS"
    assert ("progress", {"chars": 8}) in events
    assert "example  (entry point flowqd_example (flowqd-example 0.1.0))" in describe_plugins(pm)


async def test_example_plugin_from_a_plugins_path_folder() -> None:
    pm = load_plugins(PluginsConfig(paths=[str(EXAMPLE)], disable=["example"]))
    plugin = pm.get_plugin("flowqd_example")
    assert plugin is not None and plugin is not sys.modules.get("flowqd_example")
    assert plugin.__file__ == str(EXAMPLE / "flowqd_example.py")
    result, _events = await run_flow_document(
        REVERSE_FLOW, "drawer", executors=collect_executors(pm)
    )
    assert result.output == "REWARD"


def test_same_type_from_two_plugins_names_both(example_installed: None) -> None:
    with pytest.raises(PluginError) as info:
        load_plugins(PluginsConfig(paths=[str(EXAMPLE)]))
    assert str(info.value) == (
        "node type 'reverse' is provided by two plugins: 'example' and 'flowqd_example'; "
        "disable one of them with plugins.disable"
    )


def test_plugin_overriding_a_builtin_type_names_both(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "myecho",
        PLUGIN_HEADER
        + """
    @hookimpl
    def flowqd_executors():
        return [Executor(type="echo", params=P, run=run, description="mine")]
    """,
    )
    with pytest.raises(PluginError, match=r"'flowqd\.executors\.echo' and 'myecho'"):
        load_plugins(PluginsConfig(paths=[str(tmp_path)], disable=["example"]))


def test_broken_plugin_file_names_it_and_disable_skips_it(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, "broken", "import flowqd\nraise RuntimeError('half-written')\n")
    write_plugin(tmp_path, "_private_helper", "raise RuntimeError('never loaded')\n")
    with pytest.raises(PluginError) as info:
        load_plugins(PluginsConfig(paths=[str(tmp_path)]))
    assert str(info.value) == (
        f"plugin 'broken' ({path}) failed to import: RuntimeError: half-written; "
        "fix it, or add 'broken' to plugins.disable"
    )
    assert "flowqd_path_plugins.broken" not in sys.modules
    pm = load_plugins(PluginsConfig(paths=[str(tmp_path)], disable=["broken"]))
    assert pm.is_blocked("broken") and "Disabled: broken" in describe_plugins(pm)


def test_broken_module_and_missing_folder() -> None:
    with pytest.raises(PluginError) as info:
        load_plugins(PluginsConfig(modules=["flowqd_no_such_plugin"]))
    assert str(info.value).startswith(
        "plugin 'flowqd_no_such_plugin' (plugins.modules) failed to import: "
        "ModuleNotFoundError: No module named 'flowqd_no_such_plugin'"
    )
    with pytest.raises(PluginError, match=r"plugins\.paths: '/no/such/folder' is not a folder"):
        load_plugins(PluginsConfig(paths=["/no/such/folder"]))


def test_plugin_by_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(
        tmp_path,
        "flowqd_test_modplugin",
        PLUGIN_HEADER
        + """
    @hookimpl
    def flowqd_executors():
        return [Executor(type="modtype", params=P, run=run, description="by module name")]
    """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = load_plugins(PluginsConfig(modules=["flowqd_test_modplugin"], disable=["example"]))
    assert "modtype" in collect_executors(pm)
    assert "flowqd_test_modplugin  (module)" in describe_plugins(pm)
    monkeypatch.delitem(sys.modules, "flowqd_test_modplugin")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "@hookimpl\ndef flowqd_executor():\n    return []\n",
            "plugin 'bad' (file {path}) has a bad hook: unknown hook 'flowqd_executor'",
        ),
        (
            "@hookimpl\ndef flowqd_executors():\n    return 'echo'\n",
            "plugin 'bad': flowqd_executors() must return a list of flowqd.Executor, got str",
        ),
        (
            "@hookimpl\ndef flowqd_executors():\n    return [1]\n",
            "plugin 'bad': flowqd_executors() returned 1, not a flowqd.Executor",
        ),
        (
            "@hookimpl\ndef flowqd_executors():\n    raise KeyError('x')\n",
            "plugin 'bad': flowqd_executors() raised KeyError: 'x'",
        ),
        (
            "@hookimpl\ndef flowqd_executors():\n"
            "    return [Executor(type='bad type', params=P, run=run, description='')]\n",
            "plugin 'bad': flowqd_executors() raised ValueError: executor type must be a name",
        ),
        (
            "@attrs.frozen\nclass U:\n    x: int | str\n"
            "@hookimpl\ndef flowqd_executors():\n"
            "    return [Executor(type='u', params=U, run=run, description='')]\n",
            "plugin 'bad': node type 'u': params class U cannot be used: "
            "StructureHandlerNotFoundError: Unsupported type: int | str",
        ),
    ],
    ids=[
        "typo-in-hook-name",
        "not-a-list",
        "not-an-executor",
        "hook-raises",
        "bad-type-name",
        "unusable-params",
    ],
)
def test_bad_plugins_are_named(tmp_path: Path, body: str, message: str) -> None:
    path = write_plugin(tmp_path, "bad", textwrap.dedent(PLUGIN_HEADER) + body)
    with pytest.raises(PluginError) as info:
        load_plugins(PluginsConfig(paths=[str(tmp_path)], disable=["example"]))
    assert str(info.value).startswith(message.format(path=path))


def test_disable_builtin_and_warn_about_unknown_names(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flowqd.plugins"):
        pm = load_plugins(PluginsConfig(disable=["flowqd.executors.http", "exampel", "example"]))
    assert "http" not in collect_executors(pm)
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "plugins.disable names 'exampel', but no plugin has that name"
    ]


def test_describe_plugins_lists_types_and_params() -> None:
    text = describe_plugins(load_plugins(PluginsConfig(disable=["example"])))
    assert "  flowqd.executors.llm  (built-in)\n" in text
    assert (
        "  delay  [flowqd.executors.delay]  Wait ms milliseconds, then return its input "
        "(or the question).\n      ms: int  (required)\n"
    ) in text
    assert "      method: str = 'GET'\n" in text
    assert "      messages: list[Message] = []\n" in text
    assert "      temperature: float | None = None\n" in text
    assert (
        "  echo  [flowqd.executors.echo]  Return its single input; with no inputs, the "
        "question.\n      (no params)\n"
    ) in text


async def test_hook_flowqd_executors() -> None:
    @attrs.frozen
    class Params:
        times: int = 2

    async def repeat(ctx: NodeContext) -> str:
        return str(ctx.inputs["text"]) * ctx.params.times

    class Plugin:
        @hookimpl
        def flowqd_executors(self) -> list[Executor]:
            return [Executor(type="repeat", params=Params, run=repeat, description="Repeat.")]

    pm = load_plugins(PluginsConfig(disable=["example"]))
    register_plugin(pm, Plugin(), "repeat-plugin", "test")
    executors = collect_executors(pm)
    assert executors["repeat"].description == "Repeat."
    document = {
        "id": "f",
        "nodes": [
            {"id": "r", "type": "repeat", "params": {"times": 3}, "inputs": {"text": "$question"}}
        ],
        "output": "r",
    }
    result, _ = await run_flow_document(document, "ab", executors=executors)
    assert result.output == "ababab"
    # Results of all plugins are merged; pluggy calls each implementation.
    assert len(pm.hook.flowqd_executors()) == len(BUILTINS) + 1


def test_plugin_manager_type_and_hook_markers() -> None:
    assert isinstance(load_plugins(PluginsConfig()), pluggy.PluginManager)
    assert flowqd.hookimpl.project_name == "flowqd"


def test_example_plugins_own_tests_pass(example_installed: None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_each_plugin_is_asked_for_its_executors_once_at_start_up(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    write_plugin(
        tmp_path / "plugins",
        "counting",
        PLUGIN_HEADER
        + f"""
    @hookimpl
    def flowqd_executors():
        with open({str(calls)!r}, "a") as f:
            f.write("called\\n")
        return [Executor(type="counted", params=P, run=run, description="counts its calls")]
    """,
    )
    # What the daemon does: load (which checks the node types), then collect.
    pm = load_plugins(PluginsConfig(paths=[str(tmp_path / "plugins")], disable=["example"]))
    assert "counted" in collect_executors(pm)
    assert calls.read_text().splitlines() == ["called"]

"""Finding plugins and collecting the node types they provide.

Sources, in order: the built-in executors (imported here explicitly, so the
one-file binary contains them), entry points of group ``flowqd``, the module
names of ``plugins.modules``, and the ``.py`` files in the folders of
``plugins.paths`` (what works inside the frozen binary). ``plugins.disable``
names plugins not to load: a built-in's module name, an entry point's name,
a module name or a file's name without ``.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
import typing
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pluggy

from flowqd import hookspecs
from flowqd.config import PluginsConfig
from flowqd.errors import PluginError
from flowqd.executors import condition, delay, echo, http, llm, template
from flowqd.executors.base import Executor
from flowqd.flows.params import converter

log = logging.getLogger("flowqd.plugins")

BUILTINS: tuple[ModuleType, ...] = (echo, delay, template, http, llm, condition)
ENTRY_POINT_GROUP = "flowqd"
PATH_MODULE_PREFIX = "flowqd_path_plugins."


class FlowqdPluginManager(pluggy.PluginManager):
    """A PluginManager that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__("flowqd")
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        # What flowqd_executors gave, kept so that the check at load and the
        # caller's collect_executors ask each plugin once; any registration
        # may change it.
        self.collected: dict[str, tuple[Executor, str]] | None = None

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self.collected = None
        return super().register(plugin, name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self.collected = None
        return super().unregister(plugin, name)


def load_plugins(config: PluginsConfig) -> pluggy.PluginManager:
    """Load every plugin and check the node types they provide.

    Raises PluginError naming the plugin when one fails to import, has a bad
    hook, or provides a node type another plugin provides too.
    """
    pm = FlowqdPluginManager()
    for name in config.disable:
        pm.set_blocked(name)
    found: list[str] = []  # every plugin name seen, loaded or disabled
    for module in BUILTINS:
        found.append(module.__name__)
        register_plugin(pm, module, module.__name__, "built-in")
    found += _load_entry_points(pm)
    for module_name in config.modules:
        found.append(module_name)
        if pm.is_blocked(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise PluginError(
                f"plugin {module_name!r} (plugins.modules) failed to import: "
                f"{type(exc).__name__}: {exc}; fix it or remove it from plugins.modules"
            ) from exc
        register_plugin(pm, module, module_name, "module")
    for file in _plugin_files(config.paths):
        found.append(file.stem)
        if not pm.is_blocked(file.stem):
            register_plugin(pm, _load_file(file), file.stem, f"file {file}")
    for name in config.disable:
        if name not in found:
            log.warning(
                "plugins.disable names %r, but no plugin has that name; plugins: %s",
                name,
                ", ".join(found),
            )
    collect_executors(pm)
    return pm


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str, origin: str) -> None:
    """Register one plugin under ``name``; PluginError if it is bad or the name is taken."""
    if pm.is_blocked(name):
        return
    existing = pm.get_plugin(name)
    if existing is plugin:
        return
    if existing is not None:
        raise PluginError(
            f"two plugins are named {name!r}: {_origin(pm, name)} and {origin}; "
            "rename one or disable it with plugins.disable"
        )
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        raise PluginError(f"plugin {name!r} ({origin}) has a bad hook: {exc}") from exc
    if isinstance(pm, FlowqdPluginManager):
        pm.origins[name] = origin


def _load_entry_points(pm: pluggy.PluginManager) -> list[str]:
    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.append(ep.name)
        if pm.is_blocked(ep.name):
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown package"
        origin = f"entry point {ep.value} ({dist})"
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} ({origin}) failed to import: {type(exc).__name__}: {exc}; "
                f"fix or uninstall it, or add {ep.name!r} to plugins.disable"
            ) from exc
        register_plugin(pm, plugin, ep.name, origin)
    return names


def _plugin_files(paths: list[str]) -> Iterator[Path]:
    for folder in paths:
        path = Path(folder)
        if not path.is_dir():
            raise PluginError(f"plugins.paths: {folder!r} is not a folder")
        yield from sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))


def _load_file(file: Path) -> ModuleType:
    module_name = PATH_MODULE_PREFIX + file.stem
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {file.stem!r} ({file}) cannot be loaded as a module")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: attrs and typing resolve names through sys.modules.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginError(
            f"plugin {file.stem!r} ({file}) failed to import: {type(exc).__name__}: {exc}; "
            f"fix it, or add {file.stem!r} to plugins.disable"
        ) from exc
    return module


def collect_executors(pm: pluggy.PluginManager) -> dict[str, Executor]:
    """Node type -> Executor, over every plugin's ``flowqd_executors``.

    Raises PluginError when a plugin's hook fails or returns something else
    than a list of Executor, when a params class cannot be used, or when two
    plugins provide the same type (naming both).
    """
    return {type_name: executor for type_name, (executor, _plugin) in _collect(pm).items()}


def _collect(pm: pluggy.PluginManager) -> dict[str, tuple[Executor, str]]:
    if isinstance(pm, FlowqdPluginManager):
        if pm.collected is None:
            pm.collected = _call_hooks(pm)
        return pm.collected
    return _call_hooks(pm)


def _call_hooks(pm: pluggy.PluginManager) -> dict[str, tuple[Executor, str]]:
    found: dict[str, tuple[Executor, str]] = {}
    for impl in pm.hook.flowqd_executors.get_hookimpls():
        name = impl.plugin_name
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(
                f"plugin {name!r}: flowqd_executors() raised {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(result, list | tuple):
            raise PluginError(
                f"plugin {name!r}: flowqd_executors() must return a list of flowqd.Executor, "
                f"got {type(result).__name__}"
            )
        for executor in result:
            if not isinstance(executor, Executor):
                raise PluginError(
                    f"plugin {name!r}: flowqd_executors() returned {executor!r}, "
                    "not a flowqd.Executor"
                )
            if executor.type in found:
                raise PluginError(
                    f"node type {executor.type!r} is provided by two plugins: "
                    f"{found[executor.type][1]!r} and {name!r}; "
                    "disable one of them with plugins.disable"
                )
            _check_params_class(executor, name)
            found[executor.type] = (executor, name)
    return dict(sorted(found.items()))


def _check_params_class(executor: Executor, plugin: str) -> None:
    try:
        _check_structurable(executor.params, set())
    except Exception as exc:
        raise PluginError(
            f"plugin {plugin!r}: node type {executor.type!r}: params class "
            f"{executor.params.__qualname__} cannot be used: {type(exc).__name__}: {exc}"
        ) from exc


def _check_structurable(tp: Any, seen: set[Any]) -> None:
    """Find unsupported field types now, not when a flow is first registered."""
    if tp in seen or tp is type(None):
        return
    seen.add(tp)
    converter.get_structure_hook(tp)
    if typing.get_origin(tp) is typing.Literal:
        return
    if isinstance(tp, type) and attrs.has(tp):
        for field in attrs.fields(attrs.resolve_types(tp)):
            _check_structurable(field.type, seen)
    for arg in typing.get_args(tp):
        _check_structurable(arg, seen)


def describe_plugins(pm: pluggy.PluginManager) -> str:
    """What ``flowqd plugins`` prints: plugins, then node types with their params."""
    origins = pm.origins if isinstance(pm, FlowqdPluginManager) else {}
    lines = ["Plugins:"]
    disabled = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            disabled.append(name)
        else:
            lines.append(f"  {name}  ({origins.get(name, 'registered')})")
    if disabled:
        lines.append("Disabled: " + ", ".join(disabled))
    lines.append("")
    lines.append("Node types:")
    for type_name, (executor, plugin) in _collect(pm).items():
        lines.append(f"  {type_name}  [{plugin}]  {executor.description}")
        lines.extend(f"      {line}" for line in describe_params(executor.params))
    return "\n".join(lines) + "\n"


def describe_params(cls: type[Any]) -> list[str]:
    """``name: type = default`` per field; ``(no params)`` for none."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in attrs.fields(cls):
        shown = f"{field.name}: {_type_text(hints.get(field.name, field.type))}"
        if field.default is attrs.NOTHING:
            shown += "  (required)"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            shown += f" = {field.default.factory()!r}"
        else:
            shown += f" = {field.default!r}"
        out.append(shown)
    return out or ["(no params)"]


def _type_text(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    text = str(tp).replace("NoneType", "None")
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)  # drop module paths


def _origin(pm: pluggy.PluginManager, name: str) -> str:
    return (
        pm.origins.get(name, "already registered")
        if isinstance(pm, FlowqdPluginManager)
        else "already registered"
    )

"""The import rules of docs/architecture.md, checked on the source.

Each part of flowqd may import only what the page says it may: a rule broken
here is a design decision to take on purpose (change the page and this test
together), never by accident.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flowqd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every flowqd module ``path`` imports, at the top or inside a function."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield base
            # ``from flowqd import worker`` imports the module flowqd.worker.
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[_module_name(path)] = {
            name for name in _imports(path) if name == "flowqd" or name.startswith("flowqd.")
        }
    return graph


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# (who, what it may not import, why)
RULES = [
    (
        lambda m: not (_within(m, "flowqd.redis") or m.startswith("flowqd.queue.redis")),
        "flowqd.redis",
        "only the Redis backend (flowqd/queue/redis*) speaks Redis",
    ),
    (
        lambda m: _within(m, "flowqd.api"),
        "flowqd.worker",
        "the API runs jobs through the queue, never in-process",
    ),
    (
        lambda m: _within(m, "flowqd.api"),
        "flowqd.queue.memory",
        "the API sees the queue through its roles (flowqd/queue/roles.py)",
    ),
    (lambda m: _within(m, "flowqd.worker"), "flowqd.api", "a worker serves no API"),
    (
        lambda m: _within(m, "flowqd.worker"),
        "flowqd.queue.memory",
        "the worker sees the queue through WorkQueue",
    ),
    (
        lambda m: _within(m, "flowqd.executors") or _within(m, "flowqd.flows"),
        "flowqd.queue",
        "flows and executors run the same under any backend",
    ),
    (
        lambda m: _within(m, "flowqd.executors") or _within(m, "flowqd.flows"),
        "flowqd.api",
        "flows and executors know nothing of HTTP serving",
    ),
    (
        lambda m: _within(m, "flowqd.executors") or _within(m, "flowqd.flows"),
        "flowqd.worker",
        "flows and executors know nothing of how jobs are claimed",
    ),
]


def test_the_import_graph_is_read() -> None:
    graph = _graph()
    # The scan sees relative and function-level imports too: a rule checked on
    # an empty graph would pass whatever the code did.
    assert any(
        _within(name, "flowqd.redis")
        for module, names in graph.items()
        if module.startswith("flowqd.queue.redis")
        for name in names
    )
    assert any(_within(name, "flowqd.worker") for name in graph["flowqd.daemon"])
    assert any(_within(name, "flowqd.api") for name in graph["flowqd.daemon"])


@pytest.mark.parametrize(
    ("who", "forbidden", "why"), RULES, ids=[r[1] + ": " + r[2] for r in RULES]
)
def test_import_rules(who: object, forbidden: str, why: str) -> None:
    assert callable(who)
    broken = sorted(
        f"{module} imports {name}"
        for module, names in _graph().items()
        if who(module)
        for name in names
        if _within(name, forbidden)
    )
    assert not broken, f"{why}: " + "; ".join(broken)


def test_only_the_daemon_and_cli_wire_the_api_and_the_worker_together() -> None:
    both = sorted(
        module
        for module, names in _graph().items()
        if any(_within(n, "flowqd.api") for n in names)
        and any(_within(n, "flowqd.worker") for n in names)
    )
    assert both == ["flowqd.daemon"], both

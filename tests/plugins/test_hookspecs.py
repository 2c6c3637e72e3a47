"""Meta-tests: every hook is typed, documented like pytest's, and has a test_hook_<name>."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from flowqd import hookspecs

TESTS = Path(__file__).resolve().parents[1]


def hook_names() -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "flowqd_spec")
    ]


def test_hooks_exist_and_are_prefixed() -> None:
    names = hook_names()
    assert names == ["flowqd_executors"]
    assert all(name.startswith("flowqd_") for name in names)


@pytest.mark.parametrize("name", hook_names())
def test_hook_is_typed_and_documented(name: str) -> None:
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn)
    assert doc, f"{name} has no docstring"
    summary, _, rest = doc.partition("\n\n")
    assert summary and "\n" not in summary and summary.endswith("."), f"{name}: one-line summary"
    signature = inspect.signature(fn)
    assert signature.return_annotation is not inspect.Signature.empty, f"{name}: return type"
    for param in signature.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{name}: {param.name} untyped"
        assert f":param {param.name}:" in rest, f"{name}: :param {param.name}: missing"
    assert ":return:" in rest, f"{name}: the return rule (:return:) is missing"


def test_every_hook_has_a_test() -> None:
    tests = set()
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                tests.add(node.name)
    missing = [name for name in hook_names() if f"test_hook_{name}" not in tests]
    assert not missing, f"hooks without a test_hook_<name>: {missing}"

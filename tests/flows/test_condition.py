"""The condition executor: its tests of a value, the outcome it chooses, and its params' checks."""

from __future__ import annotations

from typing import Any

import pytest

from flowqd import FlowValidationError, NodeError
from flowqd.config import PluginsConfig
from flowqd.executors.condition import parse_path
from flowqd.plugins import collect_executors, load_plugins
from flowqd.testing import run_executor

CONDITION = collect_executors(load_plugins(PluginsConfig(disable=["example"])))["condition"]


async def choose(params: dict[str, Any], value: Any) -> str:
    output, events = await run_executor(CONDITION, params, {"value": value})
    assert events == []
    assert isinstance(output, str)
    return output


ROUTES = {
    "cases": [
        {"name": "billing", "regex": r"(?i)\b(invoice|bill)"},
        {"name": "numbers", "equals": [1, "two", None]},
        {"name": "book", "path": "$.order.items[0].kind", "equals": "book"},
        {"name": "quoted", "path": '$["odd key"][-1]', "equals": True},
        {"name": "urgent", "path": "$.urgent", "exists": True},
        {"name": "refund", "contains": "refund"},
        {"name": "tagged", "contains": "vip"},
    ],
    "default": "other",
}


@pytest.mark.parametrize(
    ("value", "outcome"),
    [
        ("Where is my INVOICE?", "billing"),  # regex, searched, flags inline
        ("a billiard ball", "billing"),  # searched, not matched whole: \bbill is there
        (1, "numbers"),
        (1.0, "numbers"),  # JSON numbers: 1 is 1.0
        (True, "other"),  # but true is not 1
        ("two", "numbers"),
        (None, "numbers"),  # equals null
        ("2", "other"),  # a string is never a number
        ({"order": {"items": [{"kind": "book"}]}}, "book"),
        ('{"order": {"items": [{"kind": "book"}]}}', "book"),  # JSON text, as an LLM answers
        ({"order": {"items": []}}, "other"),  # past the end: no value, no match
        ({"odd key": [False, True]}, "quoted"),
        ({"urgent": None}, "urgent"),  # exists: the path leads to a value, null too
        ("I want a refund", "refund"),  # contains: a substring
        (["a", "vip"], "tagged"),  # an item of a list
        ({"vip": 1}, "tagged"),  # a key of an object
        (42, "other"),
    ],
)
async def test_first_matching_case_wins_else_the_default(value: Any, outcome: str) -> None:
    assert await choose(ROUTES, value) == outcome


async def test_regex_reads_json_text_of_other_values_and_first_case_wins() -> None:
    params = {
        "cases": [{"name": "first", "regex": '"a":1'}, {"name": "second", "regex": "a"}],
        "default": "none",
    }
    assert await choose(params, {"a": 1}) == "first"
    assert await choose(params, "a") == "second"


async def test_exists_false_and_the_question_when_there_is_no_input() -> None:
    params = {
        "cases": [{"name": "anonymous", "path": "$.user", "exists": False}],
        "default": "known",
    }
    assert await choose(params, {"user": "ann"}) == "known"
    assert await choose(params, {}) == "anonymous"
    output, _ = await run_executor(
        CONDITION, {"cases": [{"name": "hi", "regex": "^hi"}], "default": "x"}, {}, question="hi!"
    )
    assert output == "hi"


async def test_no_match_without_default_fails_the_node_saying_so() -> None:
    params = {"cases": [{"name": "yes", "equals": "y"}, {"name": "no", "equals": "n"}]}
    with pytest.raises(NodeError) as info:
        await choose(params, "maybe")
    assert str(info.value) == (
        "no case matched 'maybe' (cases: yes, no) and the condition has no default; "
        "add a default outcome or a case that matches"
    )


@pytest.mark.parametrize(
    ("params", "problems"),
    [
        (
            {"cases": [{"name": "a", "regex": "(x"}]},
            [
                (
                    "$.params.cases[0].regex",
                    "is not a valid regular expression: missing ), unterminated subpattern "
                    "at position 0",
                )
            ],
        ),
        (
            {"cases": [{"name": "a", "path": "$.x[", "equals": 1}]},
            [
                (
                    "$.params.cases[0].path",
                    "cannot read path '$.x[' at character 4 ('['); write steps as .key, [0] "
                    'or ["key"], as in $.items[0].kind',
                )
            ],
        ),
        (
            {"cases": [{"name": "a", "path": "order.x", "equals": 1}]},
            [
                (
                    "$.params.cases[0].path",
                    "a path starts with $, as in $.order.status, got 'order.x'",
                )
            ],
        ),
        (
            {"cases": [{"name": "a b", "equals": 1}]},
            [
                (
                    "$.params.cases[0].name",
                    "expected an outcome name of 1-128 letters, digits and _ . - "
                    "(not starting with . -), got 'a b'",
                )
            ],
        ),
        (
            {"cases": [{"name": "a"}, {"name": "b", "equals": None, "regex": "x"}]},
            [
                (
                    "$.params.cases[0]",
                    "case 'a' needs exactly one test of equals, regex, contains, exists, got none",
                ),
                (
                    "$.params.cases[1]",
                    "case 'b' needs exactly one test of equals, regex, contains, exists, "
                    "got equals and regex",
                ),
            ],
        ),
        (
            {"cases": [{"name": "a", "exists": True}]},
            [
                (
                    "$.params.cases[0]",
                    "case 'a': exists tests a path; add one such as $.order.status",
                )
            ],
        ),
        (
            {"cases": [{"name": "a", "equals": 1}, {"name": "a", "equals": 2}], "default": "a"},
            [
                ("params.cases[1].name", "duplicate outcome 'a' (cases[0] has it too)"),
                (
                    "params.default",
                    "the default outcome 'a' is also the name of cases[0]; "
                    "give it a name of its own",
                ),
            ],
        ),
        ({"cases": [], "default": "a"}, [("params.cases", "a condition needs at least one case")]),
        ({"default": "a"}, [("$.params.cases", "missing (required)")]),
        (
            {"cases": [{"name": "a", "equals": 1, "regexp": "x"}]},
            [
                (
                    "$.params.cases[0].regexp",
                    "unknown key; known keys: name, equals, regex, contains, exists, path",
                )
            ],
        ),
    ],
)
async def test_bad_params_are_validation_errors_at_their_path(
    params: dict[str, Any], problems: list[tuple[str, str]]
) -> None:
    with pytest.raises(FlowValidationError) as info:
        await run_executor(CONDITION, params, {"value": 1})
    assert info.value.problems == problems


async def test_it_reads_one_input_named_value() -> None:
    with pytest.raises(FlowValidationError) as info:
        await run_executor(CONDITION, {"cases": [{"name": "a", "equals": 1}]}, {"text": 1})
    assert info.value.problems == [("inputs", "condition reads one input named 'value', got text")]


def test_paths() -> None:
    assert parse_path("$") == ()
    assert parse_path("$.order.status") == ("order", "status")
    assert parse_path("$.items[0].kind") == ("items", 0, "kind")
    assert parse_path("$.items[-1]") == ("items", -1)
    assert parse_path("$[\"a.b\"]['c']") == ("a.b", "c")
    assert parse_path('$["q\\"uote"]') == ('q"uote',)
    for bad in ("$..x", "$.x[*]", "$.x[0", "$ x"):
        with pytest.raises(ValueError, match="cannot read path"):
            parse_path(bad)

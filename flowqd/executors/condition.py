"""``condition``: chooses an outcome by testing a value; nodes run on outcomes through ``when``.

Each case names an outcome and holds one test of the value (or of the part
a JSON ``path`` picks from it): ``equals``, ``regex``, ``contains`` or
``exists``. The first case whose test holds gives the outcome, else
``default``. Patterns and paths are read when the flow is registered, so a
bad one is a validation error at its JSON path, never a failed job.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Set
from typing import Any

import attrs
import orjson

from flowqd import Executor, NodeContext, NodeError, hookimpl
from flowqd.executors.echo import at_most_one_input, single_input_or_question

# An outcome is named in other nodes' "when" and in messages.
OUTCOME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
TESTS = ("equals", "regex", "contains", "exists")


class _Unset:
    """``equals`` and ``contains`` take any JSON value, null too: absent is this."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# $, then .key, [0] or ["key"] steps: a subset of JSON path, enough to reach
# one value (no wildcards, filters or slices).
_STEP = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\[("(?:[^"\\]|\\.)*"|'[^'\\]*')\]""")


def parse_path(text: str) -> tuple[str | int, ...]:
    """``$.items[0].kind`` -> ``("items", 0, "kind")``; ValueError saying where it is wrong."""
    if not text.startswith("$"):
        raise ValueError(f"a path starts with $, as in $.order.status, got {text!r}")
    steps: list[str | int] = []
    at = 1
    while at < len(text):
        match = _STEP.match(text, at)
        if match is None:
            raise ValueError(
                f"cannot read path {text!r} at character {at + 1} ({text[at : at + 10]!r}); "
                'write steps as .key, [0] or ["key"], as in $.items[0].kind'
            )
        key, index, quoted = match.groups()
        if key is not None:
            steps.append(key)
        elif index is not None:
            steps.append(int(index))
        else:
            steps.append(orjson.loads(quoted) if quoted[0] == '"' else quoted[1:-1])
        at = match.end()
    return tuple(steps)


def _check_outcome(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not OUTCOME.fullmatch(value):
        raise ValueError(
            f"'{attribute.name}' expected an outcome name of 1-128 letters, digits and _ . - "
            f"(not starting with . -), got {show(value)}"
        )


def _check_regex(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"'regex' is not a valid regular expression: {exc}") from None


def _check_path(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None:
        try:
            parse_path(value)
        except ValueError as exc:
            raise ValueError(f"'path' {exc}") from None


@attrs.frozen
class Case:
    """One outcome and its test; ``path`` picks the part of the value tested."""

    name: str = attrs.field(validator=_check_outcome)
    equals: Any = UNSET  # a value, or a list of values any of which matches
    regex: str | None = attrs.field(default=None, validator=_check_regex)
    contains: Any = UNSET  # a substring, a list item, or an object key
    exists: bool | None = None  # the path leads to a value (or not)
    path: str | None = attrs.field(default=None, validator=_check_path)
    # Read once at registration; not params (cattrs leaves init=False alone).
    steps: Any = attrs.field(init=False, default=None, eq=False, repr=False)
    test: Any = attrs.field(init=False, default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        present = (
            self.equals is not UNSET,
            self.regex is not None,
            self.contains is not UNSET,
            self.exists is not None,
        )
        given = [name for name, there in zip(TESTS, present, strict=True) if there]
        if len(given) != 1:
            raise ValueError(
                f"case {self.name!r} needs exactly one test of {', '.join(TESTS)}, "
                f"got {' and '.join(given) or 'none'}"
            )
        if self.exists is not None and self.path is None:
            raise ValueError(
                f"case {self.name!r}: exists tests a path; add one such as $.order.status"
            )
        if self.path is not None:
            object.__setattr__(self, "steps", parse_path(self.path))
        object.__setattr__(self, "test", _test(self))


@attrs.frozen
class ConditionParams:
    cases: list[Case]
    default: str | None = attrs.field(default=None, validator=_check_outcome)


def outcomes(params: ConditionParams) -> list[str]:
    """The case names, then the default: what the node can choose."""
    names = [case.name for case in params.cases]
    return names if params.default is None else [*names, params.default]


def check_condition(params: ConditionParams, inputs: Set[str]) -> Iterator[tuple[str, str]]:
    yield from at_most_one_input("condition")(params, inputs)
    if inputs and inputs != {"value"}:
        yield "inputs", f"condition reads one input named 'value', got {', '.join(sorted(inputs))}"
    if not params.cases:
        yield "params.cases", "a condition needs at least one case"
    first: dict[str, int] = {}
    for index, case in enumerate(params.cases):
        if case.name in first:
            yield (
                f"params.cases[{index}].name",
                f"duplicate outcome {case.name!r} (cases[{first[case.name]}] has it too)",
            )
        first.setdefault(case.name, index)
    if params.default is not None and params.default in first:
        yield (
            "params.default",
            f"the default outcome {params.default!r} is also the name of "
            f"cases[{first[params.default]}]; give it a name of its own",
        )


def _test(case: Case) -> Any:
    """``test(value) -> bool`` for the case's one test (``exists`` is tested in ``choose``)."""
    if case.exists is not None:
        return None
    if case.regex is not None:
        pattern = re.compile(case.regex)
        return lambda value: pattern.search(_text(value)) is not None
    if case.equals is not UNSET:
        wanted = case.equals if isinstance(case.equals, list) else [case.equals]
        return lambda value: any(_same(value, item) for item in wanted)
    needle = case.contains
    return lambda value: _contains(value, needle)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0, and so on inside lists and objects."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _contains(value: Any, needle: Any) -> bool:
    if isinstance(value, str):
        return isinstance(needle, str) and needle in value
    if isinstance(value, list):
        return any(_same(item, needle) for item in value)
    if isinstance(value, dict):
        return isinstance(needle, str) and needle in value
    return False


_MISSING = object()


def _at(value: Any, steps: tuple[str | int, ...]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return _MISSING
        elif not isinstance(value, Mapping) or step not in value:
            return _MISSING
        value = value[step]
    return value


def _as_json(value: Any) -> Any:
    """A string that holds a JSON object or array (an LLM's answer, say) as that JSON."""
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def choose(params: ConditionParams, value: Any) -> str:
    """The outcome for ``value``: the first case that holds, else the default."""
    parsed: Any = _MISSING
    for case in params.cases:
        target = value
        if case.path is not None:
            if parsed is _MISSING:
                parsed = _as_json(value)
            target = _at(parsed, case.steps)
            if case.exists is not None:
                if (target is not _MISSING) is case.exists:
                    return case.name
                continue
            if target is _MISSING:
                continue
        if case.test(target):
            return case.name
    if params.default is not None:
        return params.default
    names = ", ".join(case.name for case in params.cases)
    raise NodeError(
        f"no case matched {show(value)} (cases: {names}) and the condition has no default; "
        "add a default outcome or a case that matches"
    )


async def run_condition(ctx: NodeContext) -> str:
    return choose(ctx.params, single_input_or_question(ctx, "condition"))


@hookimpl
def flowqd_executors() -> list[Executor]:
    return [
        Executor(
            type="condition",
            params=ConditionParams,
            run=run_condition,
            description="Choose an outcome by testing a value; nodes run on outcomes via when.",
            check=check_condition,
            branches=outcomes,
        )
    ]

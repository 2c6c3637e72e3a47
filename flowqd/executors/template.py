"""``template``: renders a string, ``{name}`` placeholders filled from inputs and job inputs."""

from __future__ import annotations

import _string  # type: ignore[import-not-found]  # str.format's own field parser
import re
import string
from collections import ChainMap
from collections.abc import Iterator, Mapping, Set
from typing import Any

import attrs
import orjson

from flowqd import Executor, NodeContext, NodeError, hookimpl


@attrs.frozen
class TemplateParams:
    template: str


class _Formatter(string.Formatter):
    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        # ``{a.b}`` and ``{a[b]}`` look keys and indexes up, never attributes:
        # str.format's getattr would let a template reach into Python objects
        # ({question.__class__...}), and templates come from API callers.
        first, rest = _string.formatter_field_name_split(field_name)
        value = self.get_value(first, args, kwargs)
        for _is_attr, key in rest:
            in_list = isinstance(value, list) and isinstance(key, int) and abs(key) < len(value)
            if not (in_list or (isinstance(value, Mapping) and key in value)):
                raise KeyError(field_name)
            value = value[key]
        return value, str(first)

    def format_field(self, value: Any, format_spec: str) -> Any:
        # Objects from upstream (an http node's JSON, say) read better as JSON
        # than as Python reprs.
        if not format_spec and isinstance(value, dict | list):
            return orjson.dumps(value).decode()
        if value is None and not format_spec:
            return ""
        if format_spec and too_wide(format_spec):  # a spec from a nested placeholder
            raise NodeError(
                f"template format spec {format_spec!r} asks for a width or precision over "
                f"{MAX_WIDTH}"
            )
        return super().format_field(value, format_spec)


_FORMATTER = _Formatter()

# Widths and precisions make that many characters: {question:>200000000} made
# a 200 MB output from one short question.
MAX_WIDTH = 10_000
_NUMBERS = re.compile(r"\d+")
# Job inputs every prediction carries (question when one is sent): a template
# may read them without a node input. Other job inputs come through an input
# such as "topic": "$topic", so the API knows the flow needs them.
JOB_INPUTS = ("question", "overrideConfig", "history", "chatId", "sessionId")


def too_wide(format_spec: str) -> str | None:
    """The width or precision in ``format_spec`` over MAX_WIDTH, if any."""
    # Width and precision are the only numbers a format spec has (a digit as
    # fill character stands alone), so no need to parse its mini-language.
    for match in _NUMBERS.finditer(format_spec):
        number = match.group()
        digits = number.lstrip("0")
        if len(digits) > len(str(MAX_WIDTH)) or int(digits or "0") > MAX_WIDTH:
            return number if len(number) <= 20 else number[:17] + "..."
    return None


def fields(template: str) -> list[tuple[str, str, str]]:
    """``(field, name, format spec)`` of every placeholder, nested ones in format specs
    too; raises ValueError on bad syntax."""
    found = []
    for _text, field, spec, _conversion in _FORMATTER.parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(
                f"placeholder {{{field}}} needs a name: use {{question}} or an input's name"
            )
        found.append((field, root, spec or ""))
        if spec:
            found += fields(spec)  # {x:>{width}}
    return found


def check_template(params: TemplateParams, inputs: Set[str]) -> Iterator[tuple[str, str]]:
    try:
        found = fields(params.template)
    except ValueError as exc:
        yield "params.template", f"{exc} (write {{{{ and }}}} for literal braces)"
        return
    named = ", ".join(sorted(inputs)) or "none"
    missing: dict[str, str] = {}
    for field, root, spec in found:
        if root not in inputs and root not in JOB_INPUTS:
            missing.setdefault(root, field)
        wide = None if "{" in spec else too_wide(spec)  # nested: checked when rendered
        if wide is not None:
            yield (
                "params.template",
                f"placeholder {{{field}:{spec}}} asks for a width or precision of {wide}; "
                f"at most {MAX_WIDTH} is allowed",
            )
    for root, field in missing.items():
        yield (
            "params.template",
            f"placeholder {{{field}}} has no value: a template reads this node's inputs "
            f"({named}) and the job inputs {', '.join(JOB_INPUTS)}; to read another job "
            f'input add "{root}": "${root}" to the node\'s inputs',
        )


async def run_template(ctx: NodeContext) -> str:
    values: Mapping[str, Any] = ChainMap(dict(ctx.inputs), dict(ctx.flow_inputs))
    try:
        return _FORMATTER.vformat(ctx.params.template, (), values)
    except KeyError as exc:
        have = ", ".join(ctx.inputs) or "none"
        jobs = ", ".join(ctx.flow_inputs) or "none"
        raise NodeError(
            f"template placeholder {{{exc.args[0]}}} has no value: it is neither an input "
            f"of this node (inputs: {have}) nor a job input (given: {jobs})"
        ) from None
    except (IndexError, AttributeError, TypeError, ValueError) as exc:
        raise NodeError(f"cannot render the template: {exc}") from None


@hookimpl
def flowqd_executors() -> list[Executor]:
    return [
        Executor(
            type="template",
            params=TemplateParams,
            run=run_template,
            description="Render a string; {name} placeholders take inputs, then job inputs.",
            check=check_template,
        )
    ]

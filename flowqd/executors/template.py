"""``template``: renders a string, ``{name}`` placeholders filled from inputs and job inputs."""

from __future__ import annotations

import _string  # type: ignore[import-not-found]  # str.format's own field parser
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
        return super().format_field(value, format_spec)


_FORMATTER = _Formatter()


def placeholders(template: str) -> list[str]:
    """The placeholder names; raises ValueError on bad syntax."""
    names = []
    for _text, field, spec, _conversion in _FORMATTER.parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(
                f"placeholder {{{field}}} needs a name: use {{question}} or an input's name"
            )
        names.append(root)
        if spec:
            placeholders(spec)  # nested placeholders in a format spec
    return names


def check_template(params: TemplateParams, _inputs: Set[str]) -> Iterator[tuple[str, str]]:
    try:
        placeholders(params.template)
    except ValueError as exc:
        yield "params.template", f"{exc} (write {{{{ and }}}} for literal braces)"


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

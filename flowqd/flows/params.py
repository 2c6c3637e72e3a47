"""Structuring a node's raw ``params`` object into its executor's attrs class.

Problems come back as ``(json_path, message)`` pairs so a flow's validation
can report every one of them at once; nothing here raises on bad input.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import cattrs
import orjson
from cattrs.cols import list_structure_factory
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

Problem = tuple[str, str]

converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


def _strict_scalar(value: Any, cls: type[Any]) -> Any:
    # cattrs would turn "5" into 5 and 1 into True; in a flow document that
    # is a mistake worth reporting, not a value to guess at.
    if cls is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, cls) or (cls in (int, float) and isinstance(value, bool)):
        raise TypeError(f"expected {describe_type(cls)}, got {show(value)}")
    return value


for _scalar in (str, int, float, bool):
    converter.register_structure_hook(_scalar, _strict_scalar)


def _is_list(tp: Any) -> bool:
    return tp is list or get_origin(tp) is list


def _strict_list(tp: Any) -> Any:
    # cattrs makes a list of anything iterable: "abc" would become three items.
    inner = list_structure_factory(tp, converter)

    def hook(value: Any, cls: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected {describe_type(cls)}, got {show(value)}")
        return inner(value, cls)

    return hook


converter.register_structure_hook_factory(_is_list, _strict_list)


def describe_type(tp: Any) -> str:
    """``int`` -> "an integer", ``list[str] | None`` -> "a list of strings or null"."""
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in get_args(tp))
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        args = get_args(tp)
        if not args:
            return "a list"
        item = describe_type(args[0]).removeprefix("a ").removeprefix("an ")
        return f"a list of {item}s" if not item.endswith("s") else f"a list of {item}"
    if origin in (dict, typing.Mapping) or tp is dict:
        return "an object"
    if attrs.has(tp):
        return "an object"
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        type(None): "null",
        Any: "any value",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def key_path(path: str, key: Any) -> str:
    """Append an object key to a JSON path: ``$.a`` + ``b`` -> ``$.a.b``."""
    if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    if isinstance(key, str):
        return f"{path}[{orjson.dumps(key).decode()}]"
    return f"{path}[{show(key)}]"


def type_hints(cls: type[Any]) -> dict[str, Any]:
    return {f.name: f.type for f in attrs.fields(attrs.resolve_types(cls))}


def structure_params(cls: type[Any], raw: Any, path: str) -> tuple[Any, list[Problem]]:
    """Structure ``raw`` into ``cls``; return ``(instance or None, problems)``."""
    if not isinstance(raw, Mapping):
        return None, [(path, f"expected an object, got {show(raw)}")]
    bad_keys = [k for k in raw if not isinstance(k, str)]
    if bad_keys:
        return None, [(path, f"keys must be strings, got {show(bad_keys[0])}")]
    try:
        return converter.structure(dict(raw), cls), []
    except (ClassValidationError, IterableValidationError) as exc:
        problems: list[Problem] = []
        _walk(exc, path, problems)
        return None, problems
    except Exception as exc:
        return None, [(path, _message(exc, None) or f"invalid params: {exc}")]


def _walk(exc: BaseException, path: str, out: list[Problem], tp: Any = None) -> None:
    if isinstance(exc, ClassValidationError):
        hints = type_hints(exc.cl)
        noted, other = exc.group_exceptions()
        for sub, note in noted:
            _walk(sub, key_path(path, note.name), out, hints.get(note.name))
        for sub in other:
            if isinstance(sub, ForbiddenExtraKeysError):
                _walk(sub, path, out)
            else:
                out.append(_init_problem(sub, path, hints))
    elif isinstance(exc, IterableValidationError):
        inner = get_args(exc.cl)
        item_tp = inner[-1] if inner else None
        inoted, iother = exc.group_exceptions()
        for sub, inote in inoted:
            index = inote.index
            sub_path = f"{path}[{index}]" if isinstance(index, int) else key_path(path, index)
            _walk(sub, sub_path, out, item_tp)
        for sub in iother:
            _walk(sub, path, out, exc.cl)
    elif isinstance(exc, ForbiddenExtraKeysError):
        # Fields set in __attrs_post_init__ (init=False) are not keys a flow writes.
        known = ", ".join(f.name for f in attrs.fields(exc.cl) if f.init) or "none"
        for key in sorted(exc.extra_fields, key=str):
            out.append((key_path(path, key), f"unknown key; known keys: {known}"))
    else:
        out.append((path, _message(exc, tp)))


_QUOTED_FIELD = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)' (.+)", re.DOTALL)


def _init_problem(exc: BaseException, path: str, hints: Mapping[str, Any]) -> Problem:
    """A validator or ``__attrs_post_init__`` refused the values.

    attrs' own validators start their message with the quoted field name;
    use it to point at the field.
    """
    # attrs' validators pass extra args (the Attribute...) after the message.
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = text or type(exc).__name__
    match = _QUOTED_FIELD.match(text)
    if match and match.group(1) in hints:
        return key_path(path, match.group(1)), match.group(2)
    return path, text


def _message(exc: BaseException, tp: Any) -> str:
    if isinstance(exc, KeyError):
        return "missing (required)"
    text = str(exc)
    if isinstance(exc, TypeError) and text.startswith("expected "):
        return text
    if tp is not None:
        return f"expected {describe_type(tp)}"
    return text or type(exc).__name__

"""Typed conversion between config dataclasses and plain data (JSON values, CLI strings).

One place knows how a dataclass field's type hint maps to a value, so that the resolved
config file written for a job and the ``--set KEY=VALUE`` overrides follow the same rules.
Supported hints: bool, int, float, str, ``X | None``, ``Literal[...]``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]``, dataclasses, and unions of dataclasses that carry a
``KIND`` class variable (the discriminator written as ``"kind"``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from .errors import UserError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null", "~"}


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a dataclass's init fields (a copy: callers may change it)."""
    return dict(_field_hints(cls))


@functools.lru_cache(maxsize=None)
def _field_hints(cls: type) -> dict[str, Any]:
    # typing.get_type_hints evaluates every string annotation: ~1 ms a class, and --set,
    # from_dict and the node-count search ask for the same few classes again and again.
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def to_plain(obj: Any) -> Any:
    """A dataclass tree as JSON-ready data; dataclasses with ``KIND`` record it as ``kind``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        kind = getattr(type(obj), "KIND", None)
        if kind is not None:
            out["kind"] = kind
        for f in dataclasses.fields(obj):
            if f.init:
                out[f.name] = to_plain(getattr(obj, f.name))
        return out
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _is_optional(hint: Any) -> tuple[bool, Any]:
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) < len(get_args(hint)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]
            return True, inner
    return False, hint


def _dataclass_union(hint: Any) -> dict[str, type] | None:
    if get_origin(hint) in (Union, types.UnionType):
        members = get_args(hint)
        if all(dataclasses.is_dataclass(m) and hasattr(m, "KIND") for m in members):
            return {m.KIND: m for m in members}
    return None


def describe(hint: Any) -> str:
    """A short human name of a type hint, for error messages."""
    optional, inner = _is_optional(hint)
    if optional:
        return f"{describe(inner)} or none"
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if get_origin(hint) in (list, tuple):
        return f"list of {describe(get_args(hint)[0])}"
    if get_origin(hint) is dict:
        return f"mapping of {describe(get_args(hint)[1])}"
    return getattr(hint, "__name__", str(hint))


def from_plain(hint: Any, value: Any, path: str) -> Any:
    """Build a value of type ``hint`` from plain data; errors name ``path``."""
    optional, inner = _is_optional(hint)
    if value is None:
        if optional:
            return None
        raise UserError(f"{path}: expected {describe(hint)}, got none")
    hint = inner
    union = _dataclass_union(hint)
    if union is not None:
        if not isinstance(value, dict) or value.get("kind") not in union:
            raise UserError(f"{path}: expected a mapping with kind in {sorted(union)}")
        return from_plain(union[value["kind"]], value, path)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a mapping, got {value!r}")
        hints = field_hints(hint)
        unknown = set(value) - set(hints) - {"kind"}
        if unknown:
            raise UserError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
        kwargs = {k: from_plain(hints[k], v, f"{path}.{k}") for k, v in value.items() if k != "kind"}
        try:
            return hint(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise UserError(f"{path}: {exc}") from None
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise UserError(f"{path}={value!r}: expected {describe(hint)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{path}: expected a list, got {value!r}")
        items = [from_plain(get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{path}: expected a mapping, got {value!r}")
        val_hint = get_args(hint)[1]
        return {str(k): from_plain(val_hint, v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{path}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{path}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{path}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{path}: expected a string, got {value!r}")
    raise UserError(f"{path}: unsupported type {hint!r}")


def parse_text(hint: Any, text: str, path: str) -> Any:
    """Parse a command-line string into a value of type ``hint`` (used by ``--set``)."""
    optional, inner = _is_optional(hint)
    if optional and text.strip().lower() in _NONE:
        return None
    hint = inner
    origin = get_origin(hint)
    if hint is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise UserError(f"{path}={text!r}: expected true or false")
    if hint is int:
        try:
            return int(text.replace("_", ""), 0)
        except ValueError:
            raise UserError(f"{path}={text!r}: expected an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{path}={text!r}: expected a number") from None
    if hint is str:
        return text
    if origin is Literal:
        choices = get_args(hint)
        for choice in choices:
            if str(choice) == text:
                return choice
        raise UserError(f"{path}={text!r}: expected {describe(hint)}")
    if origin in (list, tuple, dict):
        # Structured values are given as JSON; a list of strings may also be comma separated.
        stripped = text.strip()
        if stripped.startswith(("[", "{")):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: invalid JSON value ({exc.msg})") from None
        elif origin in (list, tuple):
            value = [part for part in text.split(",") if part] if text else []
            elem = get_args(hint)[0]
            value = [parse_text(elem, part, f"{path}[{i}]") for i, part in enumerate(value)]
        else:
            raise UserError(f"{path}: expected a JSON object")
        return from_plain(hint, value, path)
    raise UserError(f"{path}: cannot be set from the command line")

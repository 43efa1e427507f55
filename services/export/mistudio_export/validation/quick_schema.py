"""Yes/no against a format's JSON Schema, compiled once into plain Python checks.

Most files are valid, so the validator asks this first and lets jsonschema explain only the
documents that fail. Arrays of plain numbers or strings (tokens, values: most of every file) are
checked in one pass over their item types and bounds instead of one call per item: about twice
as fast as fastjsonschema's generated code on real exports. It reads the keywords our schemas use
and refuses to compile any other, so a new keyword cannot be skipped silently.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

from mistudio_export.formats.schemas import inlined_schema

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})
_KEYWORDS = frozenset({
    "type", "const", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "pattern", "minItems", "maxItems", "items", "required",
    "properties", "anyOf", "oneOf",
})  # fmt: skip
_PY_TYPES: dict[str, frozenset[type]] = {
    "string": frozenset({str}),
    "array": frozenset({list}),
    "object": frozenset({dict}),
    "boolean": frozenset({bool}),
    "null": frozenset({type(None)}),
    "number": frozenset({int, float}),
    "integer": frozenset({int}),
}
_NUMBER = frozenset({int, float})
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


@functools.cache
def _compiled(name: str) -> Check:
    return compile_schema(inlined_schema(name))


def is_valid(name: str, doc: Any) -> bool:
    """Whether ``doc`` is valid against the named schema (as jsonschema would say)."""
    return _compiled(name)(doc)


def compile_schema(node: dict[str, Any]) -> Check:
    """One check for a schema node whose local references are inlined."""
    unknown = set(node) - _ANNOTATIONS - _KEYWORDS
    if unknown:
        raise ValueError(f"the quick schema check does not implement {sorted(unknown)}")
    container = node.get("type") if node.get("type") in ("object", "array") else None
    array, obj = _array(node, container == "array"), _object(node, container == "object")
    own_type = (array if container == "array" else obj) is not None  # it tests the type
    checks = [
        c
        for c in (
            None if own_type else _type(node), _constant(node), _bounds(node), _string(node),
            array, obj, _combined(node),
        )
        if c is not None
    ]  # fmt: skip
    if len(checks) == 1:
        return checks[0]

    def all_of(value: Any) -> bool:
        for check in checks:  # noqa: SIM110 - a loop: all() over a generator costs twice as much
            if not check(value):
                return False
        return True

    return all_of


def _type(node: dict[str, Any]) -> Check | None:
    if "type" not in node:
        return None
    names = node["type"] if isinstance(node["type"], list) else [node["type"]]
    allowed = frozenset().union(*(_PY_TYPES[n] for n in names))
    integral_floats = "integer" in names and "number" not in names

    def of_type(value: Any) -> bool:
        kind = type(value)
        return kind in allowed or (integral_floats and kind is float and value.is_integer())

    return of_type


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: true is no 1, and containers compare item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_json_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | dict) or isinstance(b, list | dict):
        return False
    return bool(a == b)


def _constant(node: dict[str, Any]) -> Check | None:
    if "const" in node:
        choices = [node["const"]]
    elif "enum" in node:
        choices = list(node["enum"])
    else:
        return None
    return lambda value: any(_json_equal(value, c) for c in choices)


def _number_ok(bounds: dict[str, float], value: float) -> bool:
    low, high = bounds.get("minimum"), bounds.get("maximum")
    open_low, open_high = bounds.get("exclusiveMinimum"), bounds.get("exclusiveMaximum")
    return not (
        (low is not None and value < low)
        or (high is not None and value > high)
        or (open_low is not None and value <= open_low)
        or (open_high is not None and value >= open_high)
    )


def _bounds(node: dict[str, Any]) -> Check | None:
    bounds = {k: node[k] for k in _BOUNDS if k in node}
    if not bounds:
        return None
    return lambda value: type(value) not in _NUMBER or _number_ok(bounds, value)


def _string(node: dict[str, Any]) -> Check | None:
    low, high = node.get("minLength"), node.get("maxLength")
    pattern = re.compile(node["pattern"]) if "pattern" in node else None
    if low is None and high is None and pattern is None:
        return None

    def string_ok(value: Any) -> bool:
        if type(value) is not str:
            return True
        return not (
            (low is not None and len(value) < low)
            or (high is not None and len(value) > high)
            or (pattern is not None and pattern.search(value) is None)
        )

    return string_ok


def _array(node: dict[str, Any], typed: bool) -> Check | None:
    """``typed``: the node says "array", and anything else fails here (else it passes)."""
    low, high = node.get("minItems"), node.get("maxItems")
    items = node.get("items")
    if low is None and high is None and items is None:
        return None
    each = compile_schema(items) if isinstance(items, dict) else None
    scalar = _scalar_items(items) if isinstance(items, dict) else None

    def array_ok(value: Any) -> bool:
        if type(value) is not list:
            return not typed
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            return False
        if each is None or (scalar is not None and scalar(value)):
            return True
        for item in value:  # noqa: SIM110 - as in all_of
            if not each(item):
                return False
        return True

    return array_ok


def _scalar_items(items: dict[str, Any]) -> Callable[[list[Any]], bool] | None:
    """For items of one scalar type with at most numeric bounds: a one-pass check that says True
    only when every item is valid (False sends the array through the check per item)."""
    kind = items.get("type")
    if not set(items) <= {"type", *_BOUNDS} or kind not in ("number", "integer", "string"):
        return None
    allowed = _PY_TYPES[kind]
    bounds = {k: items[k] for k in _BOUNDS if k in items}
    if bounds and kind == "string":
        return None

    def all_valid(values: list[Any]) -> bool:
        if not allowed.issuperset(map(type, values)):
            return False
        if not bounds or not values:
            return True
        try:  # NaN orders with nothing: min and max are only trusted over finite values
            if not math.isfinite(sum(values)):
                return False
        except OverflowError:
            return False
        return _number_ok(bounds, min(values)) and _number_ok(bounds, max(values))

    return all_valid


def _object(node: dict[str, Any], typed: bool) -> Check | None:
    """``typed`` as in ``_array``."""
    required = tuple(node.get("required", ()))
    properties = [(k, compile_schema(s)) for k, s in node.get("properties", {}).items()]
    if not required and not properties:
        return None

    def object_ok(value: Any) -> bool:
        if type(value) is not dict:
            return not typed
        for key in required:
            if key not in value:
                return False
        for key, check in properties:  # noqa: SIM110 - as in all_of
            if key in value and not check(value[key]):
                return False
        return True

    return object_ok


def _combined(node: dict[str, Any]) -> Check | None:
    any_of = [compile_schema(s) for s in node.get("anyOf", ())]
    one_of = [compile_schema(s) for s in node.get("oneOf", ())]
    if not any_of and not one_of:
        return None

    def combined_ok(value: Any) -> bool:
        if any_of and not any(check(value) for check in any_of):
            return False
        return not one_of or sum(check(value) for check in one_of) == 1

    return combined_ok

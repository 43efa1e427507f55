"""A compiled yes/no check for the JSON Schema subset our schemas use.

jsonschema walks every object and array item through its generic machinery, which costs tens of
milliseconds per feature file. Valid documents are the common case, so they are first put
through closures compiled once per schema; only a document that fails is handed to jsonschema,
whose errors are the ones reported. The compiled check is never more lenient than jsonschema:
a keyword it does not implement makes it decline (``None``), and jsonschema decides.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

from mistudio_export.formats.schemas import inlined_schema

Check = Callable[[Any], bool]

_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description"}


class _Unsupported(Exception):
    pass


def _is_type(name: str) -> Check:
    match name:
        case "object":
            return lambda x: isinstance(x, dict)
        case "array":
            return lambda x: isinstance(x, list)
        case "string":
            return lambda x: isinstance(x, str)
        case "boolean":
            return lambda x: isinstance(x, bool)
        case "null":
            return lambda x: x is None
        case "number":
            return lambda x: type(x) in (int, float)
        case "integer":
            return lambda x: type(x) is int or (type(x) is float and x.is_integer())
    raise _Unsupported(name)


def _type(value: Any, _: dict[str, Any]) -> Check:
    names = value if isinstance(value, list) else [value]
    checks = [_is_type(n) for n in names]
    return lambda x: any(c(x) for c in checks)


def _number(x: Any) -> bool:
    return type(x) in (int, float)


def _bound(op: Callable[[Any, Any], bool]) -> Callable[[Any, dict[str, Any]], Check]:
    def build(limit: Any, _: dict[str, Any]) -> Check:
        return lambda x: not _number(x) or op(x, limit)

    return build


def _length(
    op: Callable[[int, int], bool], kind: type[list[Any]] | type[str]
) -> Callable[[Any, dict[str, Any]], Check]:
    def build(limit: Any, _: dict[str, Any]) -> Check:
        return lambda x: not isinstance(x, kind) or op(len(x), limit)

    return build


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b) and type(a) in (int, float, str, bool, type(None))


def _enum(values: Any, _: dict[str, Any]) -> Check:
    return lambda x: any(_equal(x, v) for v in values)


def _const(value: Any, _: dict[str, Any]) -> Check:
    return lambda x: _equal(x, value)


def _required(names: Any, _: dict[str, Any]) -> Check:
    return lambda x: not isinstance(x, dict) or all(n in x for n in names)


def _properties(props: Any, _: dict[str, Any]) -> Check:
    compiled = [(name, compile_schema(sub)) for name, sub in props.items()]

    def check(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        return all(c(x[name]) for name, c in compiled if name in x)

    return check


_SCALARS = {
    "number": frozenset({int, float}),
    "string": frozenset({str}),
    "integer": frozenset({int}),
}


def _items(sub: Any, _: dict[str, Any]) -> Check:
    scalar = (
        _SCALARS.get(sub.get("type", ""))
        if isinstance(sub, dict) and set(sub) <= {"type", "minimum", "maximum"}
        else None
    )
    each = compile_schema(sub)
    if scalar is None:
        return lambda x: not isinstance(x, list) or all(each(v) for v in x)
    low, high = sub.get("minimum", -math.inf), sub.get("maximum", math.inf)

    def scalars(x: Any) -> bool:
        if not isinstance(x, list):
            return True
        if not scalar.issuperset(map(type, x)):
            return all(each(v) for v in x)
        return not x or scalar is _SCALARS["string"] or (min(x) >= low and max(x) <= high)

    return scalars


def _any_of(subs: Any, _: dict[str, Any]) -> Check:
    compiled = [compile_schema(s) for s in subs]
    return lambda x: any(c(x) for c in compiled)


def _pattern(value: Any, _: dict[str, Any]) -> Check:
    regex = re.compile(value)
    return lambda x: not isinstance(x, str) or regex.search(x) is not None


_BUILDERS: dict[str, Callable[[Any, dict[str, Any]], Check]] = {
    "type": _type,
    "required": _required,
    "properties": _properties,
    "items": _items,
    "anyOf": _any_of,
    "enum": _enum,
    "const": _const,
    "pattern": _pattern,
    "minimum": _bound(lambda x, v: x >= v),
    "maximum": _bound(lambda x, v: x <= v),
    "exclusiveMinimum": _bound(lambda x, v: x > v),
    "exclusiveMaximum": _bound(lambda x, v: x < v),
    "minItems": _length(lambda n, v: n >= v, list),
    "maxItems": _length(lambda n, v: n <= v, list),
    "minLength": _length(lambda n, v: n >= v, str),
    "maxLength": _length(lambda n, v: n <= v, str),
}


def compile_schema(schema: Any) -> Check:
    if not isinstance(schema, dict):
        raise _Unsupported(repr(schema))
    checks = []
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key not in _BUILDERS:
            raise _Unsupported(key)
        checks.append(_BUILDERS[key](value, schema))
    return lambda x: all(c(x) for c in checks)


@functools.cache
def _compiled(name: str) -> Check | None:
    try:
        return compile_schema(inlined_schema(name))
    except _Unsupported:
        return None


def surely_valid(name: str, doc: Any) -> bool:
    """True only when ``doc`` certainly satisfies the named schema; False means 'ask jsonschema'."""
    check = _compiled(name)
    return check is not None and check(doc)

"""JSON Schema errors, turned into problems with a class, a pointer and a short message."""

from __future__ import annotations

from typing import Any

from jsonschema import ValidationError

from mistudio_export.formats.jsonio import pointer
from mistudio_export.formats.schemas import is_valid, schema_validator
from mistudio_export.validation.context import FileContext

_LIMITS = {"maxItems", "maxLength", "maximum"}
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _type_name(value: Any) -> str:
    if isinstance(value, bool | type(None) | dict | list | str):
        return _JSON_TYPES[type(value)]
    return "integer" if isinstance(value, int) else "number"


def _describe(err: ValidationError) -> str:
    v, inst = err.validator_value, err.instance
    match err.validator:
        case "type":
            return f"expected {v}, found {_type_name(inst)}"
        case "maxItems" | "minItems":
            bound = "at most" if err.validator == "maxItems" else "at least"
            return f"{len(inst)} items; {bound} {v} allowed"
        case "maxLength" | "minLength":
            bound = "at most" if err.validator == "maxLength" else "at least"
            return f"{len(inst)} characters; {bound} {v} allowed"
        case "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum":
            return f"{inst} violates {err.validator} {v}"
    return err.message[:200]


def _code(err: ValidationError, limits: bool) -> str:
    if err.validator == "type":
        return "WRONG_TYPE"
    if err.validator == "minItems" and err.validator_value == 1:
        return "EMPTY_ARRAY"
    if limits and err.validator in _LIMITS:
        return "LIMIT_EXCEEDED"
    return "SCHEMA_VIOLATION"


def check_schema(
    ctx: FileContext,
    doc: Any,
    schema: str,
    *,
    base: tuple[str | int, ...] = (),
    limits: bool = False,
) -> bool:
    """Report schema errors not already reported at the same place; True when there were none.

    ``limits``: report maxItems/maxLength/maximum as LIMIT_EXCEEDED (upload API limits).
    """
    if is_valid(schema, doc):
        return True
    errors = list(schema_validator(schema).iter_errors(doc))
    for err in errors:
        path = [*base, *err.absolute_path]
        if err.validator == "required":
            for name in err.validator_value:
                if isinstance(err.instance, dict) and name not in err.instance:
                    where = pointer([*path, name])
                    if not ctx.already_reported(where):
                        ctx.report("MISSING_FIELD", where, f"required field {name!r} is missing")
            continue
        where = pointer(path)
        if not ctx.already_reported(where):
            ctx.report(_code(err, limits), where, _describe(err))
    return not errors

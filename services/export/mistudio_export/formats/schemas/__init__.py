"""JSON Schemas (draft 2020-12) of every file the export formats write, loaded by name."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator, validators

SCHEMA_NAMES = (
    "prd_metadata",
    "prd_feature",
    "prd_explanations",
    "np_model",
    "np_source_set",
    "np_source",
    "np_release",
    "np_neuron",
    "np_activation",
    "np_explanation",
    "sd_batch",
    "upload_batch",
    "upload_manifest",
)


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema ``{name}.schema.json`` next to this module."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


_SCALAR_TYPES: dict[str, frozenset[type]] = {
    "number": frozenset({int, float}),
    "integer": frozenset({int}),
    "string": frozenset({str}),
}
_default_items = Draft202012Validator.VALIDATORS["items"]


def _scalar_items_ok(items: Any, instance: list[Any]) -> bool:
    """One quick pass over an array of scalars; False sends it through the exact check."""
    if not isinstance(items, dict) or not set(items) <= {"type", "minimum", "maximum"}:
        return False
    allowed = _SCALAR_TYPES.get(items.get("type", ""))
    if allowed is None or not allowed.issuperset(map(type, instance)):
        return False
    if instance and "minimum" in items and min(instance) < items["minimum"]:
        return False
    return not (instance and "maximum" in items and max(instance) > items["maximum"])


def _fast_items(validator: Any, items: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if isinstance(instance, list) and _scalar_items_ok(items, instance):
        return
    yield from _default_items(validator, items, instance, schema)


# Token and value arrays hold thousands of scalars; checking them item by item through
# jsonschema dominated validation time, so arrays of plain scalars get one quick pass.
_FastValidator = validators.extend(Draft202012Validator, {"items": _fast_items})


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace local ``#/$defs/x`` references by their target (our schemas do not recurse)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


@functools.cache
def inlined_schema(name: str) -> dict[str, Any]:
    """The named schema with its local references replaced by their targets."""
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    inlined: dict[str, Any] = _inline_refs(schema, schema.get("$defs", {}))
    return inlined


@functools.cache
def schema_validator(name: str) -> Any:
    """A jsonschema validator for the named schema (references inlined: resolving them per
    instance was a large cost of validating big exports)."""
    return _FastValidator(inlined_schema(name))


@functools.cache
def _compiled(name: str) -> Callable[[Any], Any]:
    # fastjsonschema rewrites the references of the schema it is given, hence the copy.
    schema = copy.deepcopy(inlined_schema(name))
    return fastjsonschema.compile(schema, use_default=False)


def is_valid(name: str, doc: Any) -> bool:
    """Yes/no against the named schema, with fastjsonschema's generated code (several times
    faster than jsonschema); ``schema_validator`` then explains a document that fails."""
    try:
        _compiled(name)(doc)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True

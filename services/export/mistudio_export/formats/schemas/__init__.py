"""JSON Schemas (draft 2020-12) of every file the export formats write, loaded by name."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

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


@functools.cache
def schema_validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)

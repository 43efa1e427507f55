"""The column checks apply every value rule of the PRD feature schema, read from the schema: a
value that breaks exactly one rule is refused on the batch at the pointer where the validator
refuses the written file, and a schema rule the columns cannot apply fails here."""

import copy
import dataclasses
import re
from typing import Any

import numpy as np
import pytest
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.prd_json import write_prd_export
from mistudio_export.formats.schemas import inlined_schema
from mistudio_export.validation import validate_export
from mistudio_export.validation.column_checks import column_findings
from mistudio_export.validation.schema_rules import (
    ATTRIBUTES,
    BOUNDS,
    COLUMNS,
    ITEM,
    RULES,
    SCHEMA,
    Rule,
    dashboard_values,
    example_field,
    rules_of,
    unenforced_rules,
)

from tests.export.formats.builders import explanation, naming, sae_info

VALUE_RULES = [r for r in RULES if r.keyword != "type"]
INTEGER_FIELDS = [
    r for r in RULES if r.keyword == "type" and r.limit == "integer" and not example_field(r.path)
]


def rule_id(rule: Rule) -> str:
    return f"{'/'.join(rule.path)} {rule.keyword}"


def test_every_rule_of_the_feature_schema_is_applied() -> None:
    assert unenforced_rules() == []
    assert {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum"} <= {
        r.keyword for r in RULES
    }


def test_a_rule_added_to_the_schema_that_the_columns_cannot_apply_is_named() -> None:
    schema = copy.deepcopy(inlined_schema(SCHEMA))
    statistics = schema["properties"]["statistics"]["properties"]
    statistics["token_count"]["multipleOf"] = 2
    example = schema["properties"]["activations"]["items"]["properties"]
    example["window_id"] = {"type": "integer", "minimum": 0}
    added = set(rules_of(schema, ())) - set(RULES)
    assert {rule_id(r) for r in unenforced_rules(added)} == {
        "statistics/token_count multipleOf",
        "activations/*/window_id type",
        "activations/*/window_id minimum",
    }


def test_every_dashboard_field_a_rule_names_is_read_from_a_real_dashboard(dashboards) -> None:
    for rule in RULES:
        if example_field(rule.path) is None:
            assert list(dashboard_values(dashboards[1], rule.path)), rule_id(rule)


def test_the_example_columns_have_the_types_the_schema_names(dashboards) -> None:
    batch = next(iter(column_batches(dashboards)))
    for rule in RULES:
        example = example_field(rule.path)
        if rule.keyword == "type" and example is not None:
            column = COLUMNS[example[1]]
            values = column.values(batch) if column.table is None else column.table(batch)
            assert not rule.broken(values).any(), rule_id(rule)


def breaking(rule: Rule) -> Any:
    """A value that breaks ``rule`` and no other rule of its field."""
    if rule.keyword in ("minimum", "exclusiveMinimum"):
        return rule.limit - (1 if rule.keyword == "minimum" else 0)
    if rule.keyword in ("maximum", "exclusiveMaximum"):
        return rule.limit + (1 if rule.keyword == "maximum" else 0)
    if rule.keyword == "enum":
        return Unlisted()
    assert rule.limit == "integer"
    return 2.5


@dataclasses.dataclass
class Unlisted:
    """A value outside an enum, read by the writers as an enum member (``.value``)."""

    value: str = "not-listed"


def with_value(d: Any, path: tuple[str, ...], value: Any) -> Any:
    """A copy of ``d`` with the first value ``path`` names set to ``value``."""
    d = copy.deepcopy(d)
    if path[:2] == ("statistics", "quantiles"):  # {level: value}, listed as (level, value)
        quantiles = d.statistics.quantiles
        level = min(quantiles)
        if path[-1] == "level":
            quantiles[value] = quantiles.pop(level)
        else:
            quantiles[level] = value
        return d
    node: Any = d
    for name in [p for p in path[:-1] if p != "logits"]:
        node = node[0] if name == ITEM else getattr(node, ATTRIBUTES.get(name, name))
    if path[-1] == ITEM:
        node[0] = value
    else:
        setattr(node, ATTRIBUTES.get(path[-1], path[-1]), value)
    return d


def place_pattern(rule: Rule) -> re.Pattern[str]:
    return re.compile("/" + "/".join(r"\d+" if p == ITEM else re.escape(p) for p in rule.path))


@pytest.mark.parametrize("rule", VALUE_RULES + INTEGER_FIELDS, ids=rule_id)
def test_a_value_breaking_one_schema_rule_is_refused_where_the_validator_refuses_it(
    dashboards, tmp_path, rule
) -> None:
    faulty = with_value(dashboards[1], rule.path, breaking(rule))
    feature = faulty.feature_index
    batches = list(column_batches([dashboards[0], faulty, dashboards[2]]))
    place = place_pattern(rule)
    found = {
        f.pointer
        for b in batches
        for f in column_findings(b)
        if f.feature_index == int(feature) and f.code == rule.code and place.fullmatch(f.pointer)
    }
    info = sae_info(d_sae=4096, n_prompts=256)
    write_prd_export(tmp_path, info, naming(), batches, [explanation(0)])
    problems = validate_export(tmp_path).problems
    refused = {
        p.pointer
        for p in problems
        if p.file == f"features/{feature}.json" and place.fullmatch(p.pointer)
    }
    if rule.path == ("feature_index",):  # the index names the file: the file is refused
        named = {p.file for p in problems if p.code == "UNEXPECTED_FILE"}
        refused = {"/feature_index"} if named == {f"features/{feature}.json"} else set()
    assert refused
    assert found == refused


def test_a_nan_breaks_no_bound() -> None:
    """NaN is the finiteness check's to report (NON_FINITE), not a range violation."""
    for keyword in BOUNDS:
        assert not Rule(("x",), keyword, 0).broken(np.array([np.nan])).any()

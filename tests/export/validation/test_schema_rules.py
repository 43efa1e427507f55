"""The column checks apply every value rule of the PRD feature schema, read from the schema: a
value that breaks exactly one rule is refused on the batch at the pointer where the validator
refuses the written file, and a schema rule the columns cannot apply fails here."""

import copy
import dataclasses
import re
from typing import Any

import numpy as np
import pytest
from mistudio_export.formats import upload_payloads
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


OTHER_FORMATS = ("sd_batch", "np_activation", "np_neuron", "upload_batch")
"""The other schemas of files written from column batches; their value checks are skipped too
when the batches were checked (``values_checked``)."""
SAME_AS_PRD = {
    "sd_batch features/*/feature_index minimum": "feature_index minimum",
    "sd_batch features/*/frac_nonzero minimum": "statistics/activation_frequency minimum",
    "sd_batch features/*/frac_nonzero maximum": "statistics/activation_frequency maximum",
    "sd_batch features/*/freq_hist_data_bar_heights/* minimum": "histogram/counts/* minimum",
    "sd_batch features/*/logits_hist_data_bar_heights/* minimum": (
        "logit_histogram/counts/* minimum"
    ),
    "np_activation maxValueTokenIndex minimum": "activations/*/max_token_index minimum",
    "np_neuron frac_nonzero minimum": "statistics/activation_frequency minimum",
    "np_neuron frac_nonzero maximum": "statistics/activation_frequency maximum",
    "np_neuron freq_hist_data_bar_heights/* minimum": "histogram/counts/* minimum",
    "np_neuron logits_hist_data_bar_heights/* minimum": "logit_histogram/counts/* minimum",
    "upload_batch features/*/index minimum": "feature_index minimum",
    "upload_batch features/*/activations/*/quantileFraction minimum": (
        "quantile_groups/*/bin_contains minimum"
    ),
    "upload_batch features/*/activations/*/quantileFraction maximum": (
        "quantile_groups/*/bin_contains maximum"
    ),
}
"""Rules on a value the PRD file holds too: the column checks apply the PRD's, which must be
the same rule."""
WRITER_LIMITS = {
    "upload_batch features maxItems": upload_payloads.MAX_FEATURES_PER_REQUEST,
    "upload_batch features/*/index maximum": upload_payloads.MAX_FEATURE_INDEX,
    "upload_batch features/*/topLogits maxItems": upload_payloads.MAX_LOGITS,
    "upload_batch features/*/bottomLogits maxItems": upload_payloads.MAX_LOGITS,
    "upload_batch features/*/activations/*/tokens maxItems": upload_payloads.MAX_TOKENS_PER_EXAMPLE,
    "upload_batch features/*/activations/*/values maxItems": upload_payloads.MAX_TOKENS_PER_EXAMPLE,
    "upload_batch features/*/explanations/*/text maxLength": upload_payloads.MAX_EXPLANATION_CHARS,
}
"""The upload API's limits, which its writer keeps to (it splits, cuts or skips): its constant
must be the schema's."""
NOT_FROM_A_BATCH = {
    "sd_batch model_id minLength",
    "sd_batch layer minimum",
    "sd_batch sae_set minLength",
    "sd_batch features/*/n_prompts_total minimum",
    "sd_batch features/*/n_tokens_in_prompt minimum",
    "np_activation id minLength",
    "np_activation modelId minLength",
    "np_activation layer minLength",
    "np_activation index anyOf",
    "np_activation creatorId minLength",
    "np_neuron modelId minLength",
    "np_neuron layer minLength",
    "np_neuron index anyOf",
    "upload_batch modelId minLength",
    "upload_batch source minLength",
    "upload_batch features/*/density anyOf",
    "upload_batch features/*/explanations/*/text minLength",
    "upload_batch features/*/explanations/*/methodName minLength",
    "upload_batch features/*/explanations/*/modelName minLength",
}
"""Rules on the SAE's naming and facts or on explanations (checked when the plan is made and
the files' metadata is checked in every mode), or on ids the writers make."""
EMPTY_EXAMPLE = {"tokens": [], "token_ids": [], "values": []}
ROW_CHECKS = {
    "sd_batch features/*/activations/*/qualifying_token_index minimum": (
        {"qualifying_token_index": -1},
        "SCHEMA_VIOLATION",
    ),
    **{
        f"{rule} minItems": (EMPTY_EXAMPLE, "EMPTY_ARRAY")
        for rule in (
            "sd_batch features/*/activations/*/tokens",
            "sd_batch features/*/activations/*/values",
            "np_activation tokens",
            "np_activation values",
            "upload_batch features/*/activations/*/tokens",
            "upload_batch features/*/activations/*/values",
        )
    },
}
"""Rules on an example that the column checks' row checks enforce: (the break, the code)."""
WRITTEN_NON_EMPTY = {
    "upload_batch features minItems",
    "upload_batch features/*/activations minItems",
}
"""The upload writer writes no empty payload and no feature without examples."""


def test_every_rule_of_the_other_formats_is_accounted_for() -> None:
    """A rule added to another format's schema fails here until it is enforced and listed."""
    found = {
        f"{name} {rule_id(r)}"
        for name in OTHER_FORMATS
        for r in rules_of(inlined_schema(name), ())
        if r.keyword != "type"
    }
    assert found == {
        *SAME_AS_PRD,
        *WRITER_LIMITS,
        *NOT_FROM_A_BATCH,
        *ROW_CHECKS,
        *WRITTEN_NON_EMPTY,
    }
    limits = {
        f"{name} {rule_id(r)}": r.limit
        for name in OTHER_FORMATS
        for r in rules_of(inlined_schema(name), ())
    }
    prd = {rule_id(r): r.limit for r in RULES}
    for rule, twin in SAME_AS_PRD.items():
        assert prd[twin] == limits[rule], rule
    for rule, constant in WRITER_LIMITS.items():
        assert constant == limits[rule], rule


@pytest.mark.parametrize("rule", sorted(ROW_CHECKS))
def test_an_example_breaking_another_formats_rule_is_refused_on_the_batch(dashboards, rule) -> None:
    changes, code = ROW_CHECKS[rule]
    d = dashboards[1]
    examples = list(d.top_examples)
    examples[2] = dataclasses.replace(examples[2], **changes)
    faulty = dataclasses.replace(d, top_examples=examples)
    findings = [f for b in column_batches([faulty]) for f in column_findings(b)]
    assert any(f.code == code and f.pointer.startswith("/activations/2") for f in findings)

import copy
import math

import orjson
import pytest
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.neuronpedia_importer import source_dir, write_importer_export
from mistudio_export.formats.prd_json import feature_file_name, write_prd_export
from mistudio_export.formats.schemas import SCHEMA_NAMES, is_valid, load_schema, schema_validator

from tests.export.formats.builders import dashboard, naming, sae_info


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Feature 0's PRD document, Neuron row and first Activation row, as the writers wrote them."""
    root = tmp_path_factory.mktemp("written")
    write_prd_export(root / "prd", sae_info(), naming(), column_batches([dashboard(0)]))
    write_importer_export(root / "np", sae_info(), naming(), column_batches([dashboard(0)]))
    rows = source_dir(root / "np", naming())

    def lines(stream):
        data = jsonio.read_bytes(rows / stream / "batch-0.jsonl.gz")
        return [orjson.loads(line) for line in data.splitlines()]

    document = orjson.loads((root / "prd" / feature_file_name(0)).read_bytes())
    return document, lines("features")[0], lines("activations")[0]


DRAFT7_ALIKE = {
    "$schema", "$id", "$defs", "$ref", "title", "description", "type", "required", "properties",
    "additionalProperties", "items", "anyOf", "oneOf", "enum", "const", "pattern", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems", "minLength",
    "maxLength",
}  # fmt: skip
"""Keywords that mean the same in draft 7 (what fastjsonschema implements) and 2020-12."""


def _agrees(name, doc):
    """The quick check says exactly what jsonschema says."""
    valid = not list(schema_validator(name).iter_errors(doc))
    assert is_valid(name, doc) is valid
    return valid


def _keywords(node, found):
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(key)
            if key in ("properties", "$defs"):
                for sub in value.values():
                    _keywords(sub, found)
            elif key not in ("enum", "const", "required"):
                _keywords(value, found)
    elif isinstance(node, list):
        for item in node:
            _keywords(item, found)
    return found


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_use_only_keywords_draft7_reads_alike(name):
    assert _keywords(load_schema(name), set()) <= DRAFT7_ALIKE


@pytest.mark.parametrize(
    "values",
    [[0.5, math.nan, -1.0], [math.inf, -1.0], [1e308, 1e308, -1.0], [2.0, 10**400], [3, True]],
)
def test_bounded_number_arrays_agree_with_jsonschema_whatever_they_hold(values, written):
    doc = copy.deepcopy(written[0])
    doc["histogram"]["counts"] = values
    _agrees("prd_feature", doc)


def test_written_documents_are_valid(written):
    document, neuron, activation = written
    assert is_valid("prd_feature", document)
    assert is_valid("np_neuron", neuron)
    assert is_valid("np_activation", activation)


MUTATIONS = [
    lambda d: d.__setitem__("feature_index", True),
    lambda d: d.__setitem__("feature_index", -1),
    lambda d: d.__setitem__("feature_index", 2.0),
    lambda d: d.__setitem__("feature_index", 2.5),
    lambda d: d.pop("statistics"),
    lambda d: d["activations"][0]["values"].__setitem__(0, "1"),
    lambda d: d["activations"][0]["values"].__setitem__(0, True),
    lambda d: d["activations"][0]["tokens"].__setitem__(0, 5),
    lambda d: d["activations"][0]["token_ids"].__setitem__(0, -3),
    lambda d: d["activations"][0]["token_ids"].__setitem__(0, 3.0),
    lambda d: d["statistics"].__setitem__("activation_frequency", 1.5),
    lambda d: d["statistics"]["quantiles"][0].__setitem__("level", 1),
    lambda d: d["histogram"]["counts"].__setitem__(0, -1),
    lambda d: d["histogram"].__setitem__("scale", "cubic"),
    lambda d: d.__setitem__("top_tokens_metric", None),
    lambda d: d["activations"][0].pop("max_token_index"),
    lambda d: d["quantile_groups"][0].__setitem__("bin_contains", 2),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_quick_check_agrees_with_jsonschema(mutate, written):
    doc = copy.deepcopy(written[0])
    mutate(doc)
    _agrees("prd_feature", doc)


@pytest.mark.parametrize(
    ("index", "valid"), [("12", True), (12, True), ("1a", False), (-1, False), (None, False)]
)
def test_any_of_and_pattern_follow_jsonschema(index, valid, written):
    row = copy.deepcopy(written[1])
    row["index"] = index
    assert _agrees("np_neuron", row) is valid


@pytest.mark.parametrize(
    ("density", "valid"), [(-1, True), (-1.0, True), (0.5, True), (-0.5, False)]
)
def test_const_compares_numbers_like_jsonschema(density, valid):
    body = {
        "modelId": "m",
        "source": "1-s",
        "features": [
            {
                "index": 0,
                "density": density,
                "activations": [
                    {
                        "tokens": ["a"],
                        "values": [1.0],
                        "quantileMin": 0,
                        "quantileMax": 1,
                        "quantileFraction": 0.5,
                    }
                ],
            }
        ],
    }
    assert _agrees("upload_batch", body) is valid

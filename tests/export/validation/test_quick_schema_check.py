import copy
import math

import pytest
from mistudio_export.formats.neuronpedia_importer import activation_rows, neuron_row
from mistudio_export.formats.prd_json import feature_document
from mistudio_export.formats.schemas import SCHEMA_NAMES, inlined_schema, schema_validator
from mistudio_export.validation.quick_schema import compile_schema, is_valid

from tests.export.formats.builders import dashboard, naming, sae_info


def _agrees(name, doc):
    """The quick check says exactly what jsonschema says."""
    valid = not list(schema_validator(name).iter_errors(doc))
    assert is_valid(name, doc) is valid
    return valid


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_compiles_into_the_quick_check(name):
    assert callable(compile_schema(inlined_schema(name)))


def test_a_keyword_the_quick_check_does_not_read_is_refused():
    with pytest.raises(ValueError, match="additionalProperties"):
        compile_schema({"type": "object", "additionalProperties": False})


@pytest.mark.parametrize(
    "values",
    [[0.5, math.nan, -1.0], [math.inf, -1.0], [1e308, 1e308, -1.0], [2.0, 10**400], [3, True]],
)
def test_bounded_number_arrays_agree_with_jsonschema_whatever_they_hold(values):
    doc = copy.deepcopy(feature_document(dashboard(0)))
    doc["histogram"]["counts"] = values
    _agrees("prd_feature", doc)


def test_written_documents_are_valid():
    assert is_valid("prd_feature", feature_document(dashboard(0)))
    assert is_valid("np_neuron", neuron_row(dashboard(0), sae_info(), naming()))
    assert is_valid("np_activation", activation_rows(dashboard(0), sae_info(), naming())[0])


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
def test_quick_check_agrees_with_jsonschema(mutate):
    doc = copy.deepcopy(feature_document(dashboard(0)))
    mutate(doc)
    _agrees("prd_feature", doc)


@pytest.mark.parametrize(
    ("index", "valid"), [("12", True), (12, True), ("1a", False), (-1, False), (None, False)]
)
def test_any_of_and_pattern_follow_jsonschema(index, valid):
    row = neuron_row(dashboard(0), sae_info(), naming())
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

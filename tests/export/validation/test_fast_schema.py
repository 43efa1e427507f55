import copy

import pytest
from mistudio_export.formats.neuronpedia_importer import activation_rows, neuron_row
from mistudio_export.formats.prd_json import feature_document
from mistudio_export.formats.schemas import SCHEMA_NAMES, schema_validator
from mistudio_export.validation.fast_schema import _compiled, surely_valid

from tests.export.formats.builders import dashboard, naming, sae_info


def _agrees(name, doc):
    """The compiled check may decline a valid document, never accept an invalid one."""
    valid = not list(schema_validator(name).iter_errors(doc))
    assert not (surely_valid(name, doc) and not valid)
    return valid


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_compiles(name):
    assert _compiled(name) is not None


def test_written_documents_are_surely_valid():
    assert surely_valid("prd_feature", feature_document(dashboard(0)))
    assert surely_valid("np_neuron", neuron_row(dashboard(0), sae_info(), naming()))
    assert surely_valid("np_activation", activation_rows(dashboard(0), sae_info(), naming())[0])


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
def test_compiled_check_never_accepts_what_jsonschema_rejects(mutate):
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

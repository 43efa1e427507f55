import math

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_export.records import PUBLIC_BOT_USER_ID, parse_source_id

from tests.export.formats.builders import naming, sae_info


def test_source_id_is_layer_dash_source_set():
    assert naming(layer=12, source_set="mistudio-res-16k").source_id == "12-mistudio-res-16k"


def test_source_suffix_follows_double_underscore():
    assert naming(source_suffix="l0-143").source_id == "6-mistudio-res-16k__l0-143"


def test_neuronpedia_id_is_model_slash_source_id():
    assert naming().neuronpedia_id == "gpt2-small/6-mistudio-res-16k"


def test_creator_defaults_to_the_public_bot_user():
    assert naming().creator_id == PUBLIC_BOT_USER_ID == "clkht01d40000jv08hvalcvly"


def test_valid_naming_passes():
    naming().validate()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_id": "GPT2-small"}, "naming.model_id"),
        ({"model_id": "gpt2--small"}, "naming.model_id"),
        ({"model_id": "g" * 33}, "naming.model_id"),
        ({"source_set": "neurons"}, "naming.source_set"),
        ({"source_set": "res_fs768-jb"}, "naming.source_set"),
        ({"source_set": "res--16k"}, "naming.source_set"),
        ({"source_set": "res-16k-"}, "naming.source_set"),
        ({"layer": 127}, "naming.layer"),
        ({"release_id": "my release"}, "naming.release_id"),
        ({"source_set_description": "x" * 129}, "naming.source_set_description"),
        ({"hf_repo": "not-a-repo"}, "naming.hf_repo"),
        ({"visibility": "SECRET"}, "naming.visibility"),
    ],
)
def test_naming_rule_violation_names_the_field_and_a_fix(overrides, field):
    with pytest.raises(InvalidArgument) as err:
        naming(**overrides).validate()
    assert err.value.field == field
    assert err.value.fix


def test_naming_problems_lists_every_broken_rule():
    fields = {p.field for p in naming(model_id="X", source_set="neurons").problems()}
    assert fields == {"naming.model_id", "naming.source_set"}


def test_parse_source_id_splits_layer_set_and_suffix():
    assert parse_source_id("20-gemmascope-res-16k__l0-143") == (20, "gemmascope-res-16k", "l0-143")
    assert parse_source_id("8-res_fs768-jb") == (8, "res_fs768-jb", "")
    assert parse_source_id("res-jb") is None


def test_sae_info_rejects_hook_point_of_another_layer():
    with pytest.raises(InvalidArgument) as err:
        sae_info(hook_point="blocks.7.hook_resid_post").validate()
    assert err.value.field == "sae_info.hook_point"


def test_sae_info_rejects_non_finite_l0():
    with pytest.raises(InvalidArgument) as err:
        sae_info(l0=math.nan).validate()
    assert err.value.field == "sae_info.l0"


def test_sae_info_rejects_created_at_that_is_not_iso():
    with pytest.raises(InvalidArgument) as err:
        sae_info(created_at="yesterday").validate()
    assert err.value.field == "sae_info.created_at"


def test_prompts_dataset_defaults_to_training_dataset():
    assert sae_info().prompts_dataset == "roneneldan/TinyStories"
    assert sae_info(dashboard_dataset="pile").prompts_dataset == "pile"

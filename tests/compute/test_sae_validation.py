"""An SAE checked against the tiny model and its hook before any computation."""

from __future__ import annotations

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_compute.model_access import LoadedModel
from mistudio_compute.sae import check_against_model, sae_warnings

from tests.compute.builders import tiny_model, tiny_sae


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_model()


def test_matching_sae_resolves_its_hook_and_width(tiny: LoadedModel) -> None:
    check = check_against_model(tiny_sae("standard"), tiny)
    assert (check.hook_point, check.hook_width) == ("blocks.0.hook_resid_post", 32)
    assert check.warnings == []  # unit-norm decoder, same model name


def test_hook_override_wins_over_the_sae_config(tiny: LoadedModel) -> None:
    check = check_against_model(tiny_sae("standard"), tiny, hook="blocks.1.attn.hook_z")
    assert (check.hook_point, check.hook_width) == ("blocks.1.attn.hook_z", 32)


def test_d_in_mismatch_is_invalid_argument(tiny: LoadedModel) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_against_model(tiny_sae("standard", d_in=48), tiny)
    assert err.value.field == "d_in"
    assert "48" in err.value.message and "width 32" in err.value.message


def test_hook_layer_out_of_range_is_invalid_argument(tiny: LoadedModel) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_against_model(tiny_sae("standard", hook_name="blocks.7.hook_resid_post"), tiny)
    assert err.value.field == "hook_point" and "out of range" in err.value.message


def test_sae_without_hook_needs_one_from_the_request(tiny: LoadedModel) -> None:
    sae = tiny_sae("standard", metadata={"sae_lens_version": "6.54.12"})
    assert sae.hook_name is None
    with pytest.raises(InvalidArgument) as err:
        check_against_model(sae, tiny)
    assert err.value.field == "hook_point"


def test_warnings_for_other_model_and_non_unit_decoder() -> None:
    sae = tiny_sae("standard")
    sae.weights["W_dec"] = sae.W_dec * 2
    notes = sae_warnings(sae, "gpt2-small")
    assert any("tiny-model" in n for n in notes)
    assert any("not unit-norm" in n for n in notes)

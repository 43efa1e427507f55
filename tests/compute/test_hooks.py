"""Hook vocabulary: names, parsing, layer checks, widths, detection from SAE configs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_compute.hooks import (
    HookKind,
    HookPoint,
    detect_hook_from_sae_config,
    hook_name,
    hook_width,
    parse_hook_name,
    validate_hook,
)


@dataclass
class Dims:
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 8
    d_head: int = 8
    n_key_value_heads: int | None = None


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("resid_pre", "blocks.3.hook_resid_pre"),
        ("resid_post", "blocks.3.hook_resid_post"),
        ("mlp_out", "blocks.3.hook_mlp_out"),
        ("attn_z", "blocks.3.attn.hook_z"),
        ("attn_q", "blocks.3.attn.hook_q"),
        ("attn_k", "blocks.3.attn.hook_k"),
        ("attn_v", "blocks.3.attn.hook_v"),
    ],
)
def test_hook_name_uses_transformer_lens_spelling(kind: str, expected: str) -> None:
    assert hook_name(3, kind) == expected
    assert parse_hook_name(expected) == HookPoint(3, HookKind(kind))


def test_hook_kind_accepts_transformer_lens_suffixes() -> None:
    assert hook_name(0, "hook_z") == "blocks.0.attn.hook_z"
    assert hook_name(1, HookKind.MLP_OUT) == "blocks.1.hook_mlp_out"


def test_unknown_hook_is_invalid_argument_naming_hook_point() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_hook_name("blocks.0.hook_attn_scores")
    assert err.value.field == "hook_point"
    assert "unsupported hook point" in err.value.message


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument) as err:
        hook_name(0, "residual")
    assert "resid_post" in err.value.fix


def test_layer_out_of_range_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_hook("blocks.4.hook_resid_post", n_layers=4)
    assert err.value.field == "hook_point"
    assert "out of range" in err.value.message and "0..3" in err.value.fix
    with pytest.raises(InvalidArgument):
        hook_name(-1, "resid_post")
    with pytest.raises(InvalidArgument):
        hook_name(9, "resid_post", n_layers=4)


def test_width_of_residual_and_attention_hooks() -> None:
    dims = Dims()
    assert hook_width(dims, "blocks.0.hook_resid_pre") == 64
    assert hook_width(dims, "blocks.0.hook_mlp_out") == 64
    assert hook_width(dims, "blocks.0.attn.hook_z") == 64
    assert hook_width(dims, "blocks.0.attn.hook_z", head_index=2) == 8


def test_width_of_keys_and_values_under_grouped_query_attention() -> None:
    dims = Dims(n_key_value_heads=2)
    assert hook_width(dims, "blocks.1.attn.hook_q") == 64
    assert hook_width(dims, "blocks.1.attn.hook_k") == 16
    assert hook_width(dims, "blocks.1.attn.hook_v") == 16


def test_head_index_out_of_range_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as err:
        hook_width(Dims(), "blocks.0.attn.hook_z", head_index=8)
    assert err.value.field == "hook_head_index"


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({"metadata": {"hook_name": "blocks.2.hook_resid_pre"}}, "blocks.2.hook_resid_pre"),
        ({"hook_name": "blocks.1.hook_mlp_out"}, "blocks.1.hook_mlp_out"),
        ({"hook_point": "blocks.0.attn.hook_z", "hook_point_layer": 0}, "blocks.0.attn.hook_z"),
        ({"hookpoint": "layers.3"}, "blocks.3.hook_resid_post"),
        ({"hookpoint": "layers.3.mlp"}, "blocks.3.hook_mlp_out"),
        ({"hook_layer": 5}, "blocks.5.hook_resid_post"),
        ({"d_in": 64}, None),
    ],
)
def test_detect_hook_from_sae_config(cfg: dict[str, object], expected: str | None) -> None:
    assert detect_hook_from_sae_config(cfg) == expected


def test_detect_prefers_nested_metadata_over_top_level() -> None:
    cfg = {"hook_name": "blocks.0.hook_resid_post", "metadata": {"hook_name": "blocks.1.hook_z"}}
    assert detect_hook_from_sae_config(cfg) == "blocks.1.hook_z"

"""Loading SAELens folders (v6 and legacy) and bare files; malformed input is InvalidArgument."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mistudio_common.errors import InvalidArgument
from mistudio_compute.sae import build_sae, is_v6_layout, load_sae, parse_sae_config, read_sparsity
from safetensors.numpy import save_file

from tests.compute.builders import sae_config, sae_weights, write_sae_folder


def test_v6_folder_reads_nested_metadata(tmp_path: Path) -> None:
    sae = load_sae(write_sae_folder(tmp_path / "sae", "topk", k=5))
    assert (sae.cfg.architecture, sae.cfg.k, sae.d_in, sae.d_sae) == ("topk", 5, 32, 64)
    assert sae.hook_name == "blocks.0.hook_resid_post" and sae.model_name == "tiny-model"
    assert (sae.cfg.context_size, sae.cfg.prepend_bos) == (16, True)
    assert sae.cfg.sae_lens_version == "6.54.12"


def test_legacy_folder_reads_flat_keys_and_topk_activation_fn(tmp_path: Path) -> None:
    folder = write_sae_folder(tmp_path / "sae", "topk", layout="legacy", k=6)
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["k"], cfg["architecture"]  # a 5.x file knew TopK only as activation_fn_str
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(folder)
    assert not is_v6_layout(cfg)
    assert (sae.cfg.architecture, sae.cfg.k, sae.hook_name) == (
        "topk",
        6,
        "blocks.0.hook_resid_post",
    )


def test_legacy_renames_hook_point_and_bool_normalisation() -> None:
    cfg = {"d_in": 4, "d_sae": 8, "hook_point": "blocks.3.attn.hook_z", "hook_point_head_index": 1}
    parsed = parse_sae_config(cfg | {"normalize_activations": False})
    assert (parsed.architecture, parsed.hook_name, parsed.hook_head_index) == (
        "standard",
        "blocks.3.attn.hook_z",
        1,
    )
    assert parsed.reshape_activations == "hook_z"  # as SAELens's legacy path does
    assert parsed.normalize_activations == "none" and parsed.apply_b_dec_to_input


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        ({"hookpoint": "layers.2"}, "blocks.2.hook_resid_post"),  # EleutherAI sparsify
        ({"hookpoint": "layers.2.mlp"}, "blocks.2.hook_mlp_out"),
        ({"hook_layer": 1}, "blocks.1.hook_resid_post"),  # a bare layer: SAELens 5's default
    ],
)
def test_loading_names_the_hook_of_configs_that_spell_it_another_way(
    hook: dict[str, Any], expected: str
) -> None:
    """The loader reads the hook the way hooks.detect_hook_from_sae_config does, not its own way."""
    assert parse_sae_config({"d_in": 4, "d_sae": 8} | hook).hook_name == expected


def test_bare_safetensors_with_explicit_config(tmp_path: Path) -> None:
    save_file(sae_weights("jumprelu"), str(tmp_path / "weights.safetensors"))
    sae = load_sae(tmp_path / "weights.safetensors", sae_config("jumprelu"))
    assert sae.cfg.architecture == "jumprelu" and sae.d_sae == 64


def test_bare_file_without_config_is_refused(tmp_path: Path) -> None:
    save_file(sae_weights("standard"), str(tmp_path / "weights.safetensors"))
    with pytest.raises(InvalidArgument) as err:
        load_sae(tmp_path / "weights.safetensors")
    assert err.value.field == "sae.files.config"


def test_explicit_config_overrides_cfg_json(tmp_path: Path) -> None:
    folder = write_sae_folder(tmp_path / "sae", "standard")
    sae = load_sae(folder, {"metadata": {"sae_lens_version": "6.1.0", "hook_name": "x"}})
    assert sae.hook_name == "x"


def test_missing_folder_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_sae(tmp_path / "nowhere")
    assert err.value.field == "sae.files.path"


def test_sparsity_file_is_read_when_present(tmp_path: Path) -> None:
    folder = write_sae_folder(tmp_path / "sae", "standard")
    assert read_sparsity(folder) is None
    save_file({"sparsity": np.full(64, -2.0, np.float32)}, str(folder / "sparsity.safetensors"))
    sparsity = read_sparsity(folder)
    assert sparsity is not None and torch.equal(sparsity, torch.full((64,), -2.0))


def _with_weights(tmp_path: Path, arch: str = "standard", **changes: Any) -> Path:
    weights: dict[str, Any] = dict(sae_weights(arch))
    for name, value in changes.items():
        if value is None:
            del weights[name]
        else:
            weights[name] = value
    return write_sae_folder(tmp_path / "sae", arch, weights=weights)


def test_nan_weight_names_the_tensor(tmp_path: Path) -> None:
    w_enc = sae_weights("standard")["W_enc"]
    w_enc[3, 5] = np.nan
    with pytest.raises(InvalidArgument) as err:
        load_sae(_with_weights(tmp_path, W_enc=w_enc))
    assert err.value.field == "W_enc" and "NaN" in err.value.message


def test_infinite_weight_names_the_tensor(tmp_path: Path) -> None:
    b_dec = sae_weights("standard")["b_dec"]
    b_dec[0] = np.inf
    with pytest.raises(InvalidArgument) as err:
        load_sae(_with_weights(tmp_path, b_dec=b_dec))
    assert err.value.field == "b_dec"


def test_transposed_encoder_is_detected(tmp_path: Path) -> None:
    w_enc = np.ascontiguousarray(sae_weights("standard")["W_enc"].T)
    with pytest.raises(InvalidArgument) as err:
        load_sae(_with_weights(tmp_path, W_enc=w_enc))
    assert err.value.field == "W_enc" and "transposed" in err.value.message


def test_wrong_shape_names_expected_shape(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_sae(_with_weights(tmp_path, b_enc=np.zeros(63, np.float32)))
    assert err.value.field == "b_enc" and "[64]" in err.value.message


def test_missing_threshold_for_jumprelu(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_sae(_with_weights(tmp_path, "jumprelu", threshold=None))
    assert err.value.field == "threshold" and "lack" in err.value.message


def test_extra_tensor_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_sae(_with_weights(tmp_path, "gated", b_enc=np.zeros(64, np.float32)))
    assert err.value.field == "b_enc" and "unexpected" in err.value.message


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"architecture": "relu"}, "architecture"),
        ({"architecture": None}, "architecture"),
        ({"d_in": None}, "d_in"),
        ({"d_sae": -4}, "d_sae"),
        ({"dtype": "fp32"}, "dtype"),
        ({"normalize_activations": "foo"}, "normalize_activations"),
        ({"metadata": {"sae_lens_version": "unknown"}}, "sae_lens_version"),
    ],
)
def test_bad_config_values_name_the_key(change: dict[str, Any], field: str) -> None:
    cfg = sae_config("standard") | change
    with pytest.raises(InvalidArgument) as err:
        build_sae({k: v for k, v in cfg.items() if v is not None}, sae_weights("standard"))
    assert err.value.field == field


def test_topk_without_k_is_refused_rather_than_defaulted() -> None:
    cfg = sae_config("topk")
    del cfg["k"]
    with pytest.raises(InvalidArgument) as err:
        parse_sae_config(cfg)
    assert err.value.field == "k"


def test_config_numbers_from_protobuf_struct_are_accepted() -> None:
    cfg = sae_config("topk") | {"d_in": 32.0, "d_sae": 64.0, "k": 8.0}
    parsed = parse_sae_config(cfg)
    assert (parsed.d_in, parsed.d_sae, parsed.k) == (32, 64, 8)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_config_numbers_name_the_key(value: float) -> None:
    with pytest.raises(InvalidArgument) as err:
        build_sae(sae_config("standard") | {"d_in": value}, sae_weights("standard"))
    assert err.value.field == "d_in"


def test_infinity_in_cfg_json_names_the_key(tmp_path: Path) -> None:
    folder = write_sae_folder(tmp_path / "sae", "standard")
    text = (folder / "cfg.json").read_text()
    cfg = json.loads(text)
    cfg["d_in"] = float("inf")
    (folder / "cfg.json").write_text(json.dumps(cfg))  # writes the bare token Infinity
    with pytest.raises(InvalidArgument) as err:
        load_sae(folder)
    assert err.value.field == "d_in"


def test_cfg_json_nested_100k_deep_is_invalid_argument(tmp_path: Path) -> None:
    folder = write_sae_folder(tmp_path / "sae", "standard")
    (folder / "cfg.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidArgument) as err:
        load_sae(folder)
    assert err.value.field == "sae.files.config"
    assert "nests too deeply" in str(err.value) and "RecursionError" not in str(err.value)

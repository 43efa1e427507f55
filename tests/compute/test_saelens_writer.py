"""The SAELens folder we write: layout, tensor names, sparsity, deterministic bytes, yaml entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mistudio_common.errors import InvalidArgument
from mistudio_compute.sae import load_sae
from mistudio_compute.sae.saelens_writer import (
    SaeLensMetadata,
    saelens_config,
    saelens_files,
    write_saelens_folder,
)
from safetensors.numpy import load as load_safetensors

from tests.compute.builders import tiny_sae

TENSORS = {
    "standard": {"W_enc", "b_enc", "W_dec", "b_dec"},
    "jumprelu": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
    "topk": {"W_enc", "b_enc", "W_dec", "b_dec"},
    "gated": {"W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"},
}
META = SaeLensMetadata(
    neuronpedia_id="tiny-model/0-mistudio-res-64",
    context_size=128,
    prepend_bos=True,
    dataset_path="local/stories",
)


@pytest.mark.parametrize("arch", sorted(TENSORS))
def test_weights_hold_exactly_the_architecture_tensors(arch: str) -> None:
    files = saelens_files(tiny_sae(arch), META)
    tensors = load_safetensors(files["sae_weights.safetensors"])
    assert set(tensors) == TENSORS[arch]
    assert all(t.dtype == np.float32 for t in tensors.values())
    assert tensors["W_enc"].shape == (32, 64) and tensors["W_dec"].shape == (64, 32)


def test_cfg_is_v6_layout_with_nested_metadata() -> None:
    cfg = saelens_config(tiny_sae("topk", k=5), META)
    assert (cfg["architecture"], cfg["k"], cfg["rescale_acts_by_decoder_norm"]) == (
        "topk",
        5,
        False,
    )
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (32, 64, "float32")
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    meta = cfg["metadata"]
    assert meta["sae_lens_version"].startswith("6.")
    assert (meta["hook_name"], meta["model_name"]) == ("blocks.0.hook_resid_post", "tiny-model")
    assert meta["neuronpedia_id"] == "tiny-model/0-mistudio-res-64"
    assert (meta["context_size"], meta["prepend_bos"], meta["dataset_path"]) == (
        128,
        True,
        "local/stories",
    )
    assert "hook_name" not in cfg and "model_name" not in cfg  # v6 drops top-level LLM keys


def test_non_topk_cfg_has_no_k() -> None:
    assert "k" not in saelens_config(tiny_sae("jumprelu"))


def test_metadata_overrides_the_sae_config() -> None:
    meta = SaeLensMetadata(model_name="stories260K", hook_name="blocks.2.hook_resid_post")
    cfg = saelens_config(tiny_sae("standard"), meta)["metadata"]
    assert (cfg["model_name"], cfg["hook_name"]) == ("stories260K", "blocks.2.hook_resid_post")


def test_identical_input_gives_identical_bytes() -> None:
    freq = np.linspace(0, 0.5, 64)
    first = saelens_files(tiny_sae("gated", seed=3), META, freq)
    second = saelens_files(tiny_sae("gated", seed=3), META, freq)
    assert first == second
    assert saelens_files(tiny_sae("gated", seed=4), META, freq) != first


def test_sparsity_is_log10_of_frequency() -> None:
    freq = np.array([0.0, 1e-3, 0.5, 1.0] * 16)
    files = saelens_files(tiny_sae("standard"), META, freq)
    sparsity = load_safetensors(files["sparsity.safetensors"])["sparsity"]
    np.testing.assert_allclose(sparsity, np.log10(freq + 1e-10), rtol=1e-6)
    assert sparsity[0] == pytest.approx(-10.0)
    assert "sparsity.safetensors" not in saelens_files(tiny_sae("standard"), META)


def test_wrong_number_of_frequencies_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as err:
        saelens_files(tiny_sae("standard"), META, [0.1] * 63)
    assert err.value.field == "feature_frequencies"


def test_written_folder_loads_back_unchanged(tmp_path: Path) -> None:
    sae = tiny_sae("jumprelu", seed=9)
    folder = write_saelens_folder(sae, tmp_path / "out", META, np.full(64, 0.01))
    assert sorted(p.name for p in folder.iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    ]
    loaded = load_sae(folder)
    x = torch.randn(8, 32)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    assert loaded.cfg.neuronpedia_id == META.neuronpedia_id
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "jumprelu"


@pytest.mark.parametrize(
    ("model_id", "written"),
    [
        ("llama2c:/abs/models/stories260K.bin?tokenizer=/abs/models/tok512.bin", "stories260K"),
        ("llama2c:/abs/models/stories15M.bin", "stories15M"),
        ("gpt2-small", "gpt2-small"),
    ],
)
def test_exported_cfg_names_the_model_portably(model_id: str, written: str) -> None:
    from mistudio_compute.sae_source import ResolvedSae
    from mistudio_compute.saelens_export import saelens_chunks

    resolved = ResolvedSae(tiny_sae(), "", model_id, "blocks.0.hook_resid_post")
    chunks = [c for name, c, _ in saelens_chunks(resolved, "", []) if name == "cfg.json"]
    assert json.loads(b"".join(chunks))["metadata"]["model_name"] == written

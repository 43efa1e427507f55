"""Our encode/decode equals sae_lens's own ``SAE.load_from_disk`` on the same folders.

Folders come from two writers: the hand-written builders (v6 and legacy layouts) and our
``saelens_writer``, so a mistake shared by our loader and our writer would still show here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mistudio_compute.sae import Sae, build_sae, load_sae
from mistudio_compute.sae.saelens_writer import SaeLensMetadata, write_saelens_folder

from tests.compute.builders import Layout, sae_config, sae_weights, tiny_sae, write_sae_folder

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens (a dev dependency) is not installed")

ARCHITECTURES = ["standard", "jumprelu", "topk", "gated"]


def _assert_same(ours: Sae, folder: Path, x: torch.Tensor) -> None:
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    with torch.no_grad():
        their_features = theirs.encode(x)
        their_recon = theirs.decode(their_features)
    features = ours.encode(x)
    assert 0 < int((features > 0).sum()) < features.numel()
    torch.testing.assert_close(features, their_features, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours.decode(features, x), their_recon, atol=2e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(24, 32, generator=torch.Generator().manual_seed(0))  # [N, d_in]


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("layout", ["v6", "legacy"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_handwritten_folder_encodes_like_sae_lens(
    tmp_path: Path, x: torch.Tensor, arch: str, layout: Layout, apply_b_dec: bool
) -> None:
    folder = write_sae_folder(
        tmp_path / "sae", arch, layout=layout, apply_b_dec_to_input=apply_b_dec, seed=11
    )
    _assert_same(load_sae(folder), folder, x)


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folder_we_write_encodes_like_sae_lens(
    tmp_path: Path, x: torch.Tensor, arch: str, apply_b_dec: bool
) -> None:
    sae = tiny_sae(arch, seed=12, apply_b_dec_to_input=apply_b_dec)
    meta = SaeLensMetadata(neuronpedia_id="tiny-model/0-mistudio-res-64")
    folder = write_saelens_folder(sae, tmp_path / "out", meta)
    _assert_same(sae, folder, x)
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    assert theirs.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert theirs.cfg.metadata.neuronpedia_id == "tiny-model/0-mistudio-res-64"
    assert theirs.cfg.architecture() == arch


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm"])
def test_run_time_normalisation_matches_sae_lens(
    tmp_path: Path, x: torch.Tensor, mode: str
) -> None:
    folder = write_sae_folder(tmp_path / "sae", "standard", normalize_activations=mode)
    _assert_same(load_sae(folder), folder, x * 3 + 0.5)


def test_folded_norm_scaling_factor_is_written_as_sae_lens_reads_it(
    tmp_path: Path, x: torch.Tensor
) -> None:
    cfg = sae_config("jumprelu", normalize_activations="expected_average_only_in")
    sae = build_sae(cfg | {"norm_scaling_factor": 1.7}, sae_weights("jumprelu", seed=13))
    folder = write_saelens_folder(sae, tmp_path / "out")
    _assert_same(sae, folder, x)


def test_hook_z_sae_is_written_for_sae_lens_reshaping(tmp_path: Path, x: torch.Tensor) -> None:
    """A legacy hook_z config reads flattened heads; SAELens gets reshape_activations=hook_z."""
    cfg = sae_config("standard", layout="legacy", hook_name="blocks.0.attn.hook_z")
    sae = build_sae(cfg, sae_weights("standard", seed=14))
    folder = write_saelens_folder(sae, tmp_path / "out")
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    assert theirs.cfg.reshape_activations == "hook_z"
    heads = x.reshape(24, 4, 8)  # [N, n_heads, d_head], as TransformerLens's hook_z gives it
    with torch.no_grad():
        their_features = theirs.encode(heads)
        their_recon = theirs.decode(their_features)
    torch.testing.assert_close(sae.encode(x), their_features, atol=2e-5, rtol=1e-5)
    recon = sae.decode(sae.encode(x)).reshape(24, 4, 8)
    torch.testing.assert_close(recon, their_recon, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("d_in", [32, 300, 1000])
@pytest.mark.parametrize("arch", ["standard", "jumprelu"])
def test_activations_are_sae_lens_s_bit_for_bit(tmp_path: Path, arch: str, d_in: int) -> None:
    """The matmul, then the bias, as sae_lens computes ``x @ W_enc + b_enc``: a fused addmm
    rounds otherwise once d_in > 256 (MKL adds the bias to its first partial sum over d_in)."""
    folder = write_sae_folder(tmp_path / "sae", arch, d_in, 1100, seed=3)
    theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    x = torch.randn(700, d_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs.encode(x)
    assert torch.equal(load_sae(folder).encode(x), expected)

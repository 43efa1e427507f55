"""SAEs from the HuggingFace hub and SAELens releases: the real loading path, up to the download."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from mistudio_common.errors import FailedPrecondition, InvalidArgument
from mistudio_compute.sae import load_sae

from tests.compute.builders import tiny_sae, write_sae_folder

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HuggingFace cache holding one SAE folder, with the hub unreachable (offline mode)."""
    cache = tmp_path / "hub"
    repo = cache / "models--handmade--tiny-saes"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    write_sae_folder(repo / "snapshots" / COMMIT / "layer0", "standard", d_in=32, d_sae=64)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_an_hf_folder_in_the_cache_loads_like_the_local_one(offline_cache: Path) -> None:
    sae = load_sae("hf://handmade/tiny-saes/layer0")
    x = torch.randn(5, 32)
    torch.testing.assert_close(sae.encode(x), tiny_sae("standard", d_in=32, d_sae=64).encode(x))


def test_an_hf_folder_that_cannot_be_downloaded_is_a_failed_precondition(
    offline_cache: Path,
) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        load_sae("hf://someone/missing-saes/layer3")
    assert "someone/missing-saes" in caught.value.message
    assert "HuggingFace" in caught.value.fix


def test_a_saelens_release_resolves_to_its_repository_before_the_download(
    offline_cache: Path,
) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        load_sae("saelens://gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert "jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre" in caught.value.message


def test_an_unknown_release_or_sae_id_is_invalid_argument(offline_cache: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a SAELens release"):
        load_sae("saelens://no-such-release/x")
    with pytest.raises(InvalidArgument, match="has no SAE"):
        load_sae("saelens://gpt2-small-res-jb/blocks.99.hook_resid_pre")


def test_an_hf_location_without_a_repository_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="does not name a repository"):
        load_sae("hf://only-owner")

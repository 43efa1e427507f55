"""ensure_demo_assets end to end at a tiny size: built once, reused, loadable by SAELens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mistudio_compute.model_access import load_model
from mistudio_compute.sae.loading import load_sae
from mistudio_compute.tokens import load_token_file
from mistudio_compute.training import DemoAssets, ensure_demo_assets
from mistudio_compute.training.activations import collect_activations
from mistudio_compute.training.explanations import METHOD

from tests.compute.builders import STORIES_MODEL, STORIES_TOKENIZER

pytestmark = pytest.mark.skipif(
    not (STORIES_MODEL.is_file() and STORIES_TOKENIZER.is_file()),
    reason=f"stories260K is not available at {STORIES_MODEL.parent}",
)
SIZES = {"rows": 8, "context": 32, "d_sae": 32, "steps": 40, "seed": 3}


def build(cache: Path) -> DemoAssets:
    return ensure_demo_assets(cache, STORIES_MODEL, STORIES_TOKENIZER, **SIZES)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="module")
def assets(cache: Path) -> DemoAssets:
    return build(cache)


def test_first_call_builds_everything(assets: DemoAssets) -> None:
    assert assets.built == ("corpus", "sae", "explanations")
    assert assets.token_file.is_file() and assets.explanations_file.is_file()
    assert {p.name for p in assets.sae_folder.iterdir()} == {
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    }


def test_second_call_reuses_the_cache(cache: Path, assets: DemoAssets) -> None:
    weights = assets.sae_folder / "sae_weights.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = build(cache)
    assert again.built == ()
    assert again.sae_folder == assets.sae_folder and weights.stat().st_mtime_ns == mtime


def test_same_seed_in_a_fresh_cache_gives_the_same_weight_bytes(
    tmp_path: Path, assets: DemoAssets
) -> None:
    again = build(tmp_path)
    name = "sae_weights.safetensors"
    assert (again.sae_folder / name).read_bytes() == (assets.sae_folder / name).read_bytes()


def test_saelens_loads_the_folder_and_encodes_like_ours(assets: DemoAssets) -> None:
    from sae_lens import SAE

    reference = SAE.load_from_disk(str(assets.sae_folder), device="cpu")
    ours = load_sae(assets.sae_folder)
    loaded = load_model(assets.model_ref, device="cpu")
    dataset = load_token_file(assets.token_file, prepend_bos=True)
    x = collect_activations(loaded, dataset, assets.hook_name).acts[:200]  # [tokens, d_model]
    with torch.no_grad():
        expected = reference.encode(x)
        assert torch.allclose(ours.encode(x), expected, atol=1e-5)
        assert torch.allclose(ours.decode(ours.encode(x)), reference.decode(expected), atol=1e-5)
    assert int((expected > 0).sum(-1).max()) <= 8  # TopK with k = 8
    assert reference.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert reference.cfg.metadata.model_name == "stories260K"
    assert reference.cfg.metadata.context_size == SIZES["context"]
    assert reference.cfg.metadata.prepend_bos is True


def test_training_metadata_sits_next_to_the_sae(assets: DemoAssets) -> None:
    training = json.loads((assets.sae_folder.parent / "training.json").read_text())
    assert training["seed"] == SIZES["seed"] and training["n_training_tokens"] > 0
    assert set(assets.metrics) >= {"l0", "explained_variance", "dead_fraction"}
    assert 0 < assets.metrics["l0"] <= 8 and 0 <= assets.metrics["dead_fraction"] <= 1


def test_explanations_are_labelled_heuristic(assets: DemoAssets) -> None:
    rows = json.loads(assets.explanations_file.read_text())
    assert rows and all(r["method"] == METHOD and r["explainer_model"] == "" for r in rows)
    assert all(r["description"].startswith("[top-tokens heuristic]") for r in rows)
    assert all(0 <= r["feature_index"] < SIZES["d_sae"] for r in rows)

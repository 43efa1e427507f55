"""The fast forward agrees with TransformerLens on the real stories260K model."""

from __future__ import annotations

import pytest
import torch
from mistudio_common.errors import InvalidArgument
from mistudio_compute.model_access import LoadedModel, capture_hook, load_model
from mistudio_compute.training.fast_llama import FastLlama

from tests.compute.builders import STORIES_MODEL, STORIES_REF, STORIES_TOKENIZER, tiny_model

needs_stories = pytest.mark.skipif(
    not (STORIES_MODEL.is_file() and STORIES_TOKENIZER.is_file()),
    reason=f"stories260K is not available at {STORIES_MODEL.parent}",
)


@pytest.fixture(scope="module")
def stories() -> LoadedModel:
    return load_model(STORIES_REF, device="cpu")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    ids = torch.randint(3, 512, (3, 40), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1
    return ids  # [batch, pos]


@needs_stories
def test_logits_match_transformer_lens(stories: LoadedModel, tokens: torch.Tensor) -> None:
    with torch.inference_mode():
        expected = stories.model(tokens)
    assert torch.allclose(FastLlama(stories.model).logits(tokens), expected, atol=1e-4)


@needs_stories
def test_cached_decoding_matches_one_full_pass(stories: LoadedModel, tokens: torch.Tensor) -> None:
    fast = FastLlama(stories.model)
    cache = fast.new_cache(tokens.shape[0], tokens.shape[1])
    pieces = [fast.logits(tokens[:, :7], cache)]  # a prefix, then one token at a time, then a block
    pieces += [fast.logits(tokens[:, i : i + 1], cache) for i in range(7, 20)]
    pieces.append(fast.logits(tokens[:, 20:], cache))
    assert torch.allclose(torch.cat(pieces, dim=1), fast.logits(tokens), atol=1e-4)


@needs_stories
@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_post"])
def test_capture_matches_capture_hook(
    stories: LoadedModel, tokens: torch.Tensor, hook: str
) -> None:
    expected = capture_hook(stories, tokens, hook)
    assert torch.allclose(FastLlama(stories.model).capture(tokens, hook), expected, atol=1e-5)


@needs_stories
def test_capture_refuses_non_residual_hooks(stories: LoadedModel, tokens: torch.Tensor) -> None:
    with pytest.raises(InvalidArgument, match="residual"):
        FastLlama(stories.model).capture(tokens, "blocks.1.attn.hook_z")


def test_other_architectures_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"llama2\.c-style"):
        FastLlama(tiny_model().model)  # LayerNorm + GELU

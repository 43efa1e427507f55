"""The fast forward agrees with TransformerLens on the real stories260K model, at every hook."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

import mistudio_compute
import pytest
import torch
from mistudio_common.errors import InvalidArgument
from mistudio_compute.adapters import HookActivations
from mistudio_compute.config import ComputeSettings
from mistudio_compute.fast_llama import CAPTURE_TOLERANCE, FastLlama, supports
from mistudio_compute.hooks import HookKind, HookPoint, parse_hook_name
from mistudio_compute.model_access import (
    LoadedModel,
    build_model,
    capture_hook,
    load_model,
    unembed_directions,
    unembedding_matrix,
    wrap_model,
)
from mistudio_compute.planning import Planner

from tests.compute.builders import (
    STORIES_DIR,
    STORIES_MODEL,
    STORIES_REF,
    STORIES_TOKENIZER,
    tiny_model,
)

needs_stories = pytest.mark.skipif(
    not (STORIES_MODEL.is_file() and STORIES_TOKENIZER.is_file()),
    reason=f"stories260K is not available at {STORIES_MODEL.parent}",
)


@pytest.fixture(scope="module")
def stories() -> LoadedModel:
    return load_model(STORIES_REF, device="cpu")


@pytest.fixture(scope="module")
def reference() -> LoadedModel:
    """The same model read through TransformerLens alone."""
    return load_model(STORIES_REF, device="cpu", transformer_lens_forward=True)


@pytest.fixture(scope="module")
def tokens(stories: LoadedModel) -> torch.Tensor:
    """A story's opening and random text pieces, 128 tokens a row (the bench's rows)."""
    assert stories.tokenizer is not None
    text = "Once upon a time, there was a little girl named Lily. She loved to play outside. " * 6
    story = torch.tensor(stories.tokenizer.encode(text)[:127])
    ids = torch.randint(259, 512, (4, 128), generator=torch.Generator().manual_seed(0))
    ids[0, 1:] = story
    ids[:, 0] = 1
    return ids  # [batch, pos]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@needs_stories
def test_llama2c_models_get_the_fast_forward_and_others_do_not(
    stories: LoadedModel, reference: LoadedModel
) -> None:
    assert stories.fast is not None and stories.model is None  # no HookedTransformer built
    assert reference.fast is None and reference.model is not None
    assert tiny_model().fast is None  # LayerNorm + GELU: TransformerLens reads it


@needs_stories
@pytest.mark.parametrize(
    "point",
    [HookPoint(2, kind) for kind in HookKind]
    + [HookPoint(0, HookKind.RESID_PRE), HookPoint(4, HookKind.RESID_POST)],
    ids=str,
)
def test_capture_matches_transformer_lens_at_every_hook(
    stories: LoadedModel, reference: LoadedModel, tokens: torch.Tensor, point: HookPoint
) -> None:
    got, want = capture_hook(stories, tokens, point), capture_hook(reference, tokens, point)
    assert got.shape == want.shape
    assert relative_error(got, want) <= CAPTURE_TOLERANCE


@needs_stories
def test_one_head_matches_transformer_lens(
    stories: LoadedModel, reference: LoadedModel, tokens: torch.Tensor
) -> None:
    got = capture_hook(stories, tokens, "blocks.1.attn.hook_z", head_index=5)
    want = capture_hook(reference, tokens, "blocks.1.attn.hook_z", head_index=5)
    assert relative_error(got, want) <= CAPTURE_TOLERANCE


@needs_stories
def test_logits_match_transformer_lens(
    stories: LoadedModel, reference: LoadedModel, tokens: torch.Tensor
) -> None:
    with torch.inference_mode():
        expected = reference.transformer(tokens)
    assert stories.fast is not None
    assert stories.fast.logits(tokens).allclose(expected, atol=1e-4)
    assert FastLlama.of(reference.transformer).logits(tokens).allclose(expected, atol=1e-4)


@needs_stories
def test_cached_decoding_matches_one_full_pass(stories: LoadedModel, tokens: torch.Tensor) -> None:
    fast = stories.fast
    assert fast is not None
    cache = fast.new_cache(tokens.shape[0], tokens.shape[1])
    pieces = [fast.logits(tokens[:, :7], cache)]  # a prefix, then one token at a time, then a block
    pieces += [fast.logits(tokens[:, i : i + 1], cache) for i in range(7, 20)]
    pieces.append(fast.logits(tokens[:, 20:], cache))
    assert torch.cat(pieces, dim=1).allclose(fast.logits(tokens), atol=1e-4)


@needs_stories
def test_switches_that_change_the_forward_leave_it_to_transformer_lens(
    reference: LoadedModel,
) -> None:
    assert supports(reference.cfg)
    local = replace(reference.cfg, use_local_attn=True, window_size=8, attn_types=["local"] * 5)
    assert not supports(local)
    scaled = replace(reference.cfg, scale_attn_by_inverse_layer_idx=True)
    assert wrap_model(build_model(scaled), reference.tokenizer).fast is None


def test_other_architectures_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"llama2\.c-style"):
        FastLlama.of(tiny_model().model)  # LayerNorm + GELU


@needs_stories
@pytest.mark.parametrize("transformer_lens", [False, True])
def test_the_transformer_lens_setting_serves_its_exact_bits(
    tmp_path: Path, transformer_lens: bool
) -> None:
    settings = ComputeSettings(
        data_dir=tmp_path, input_roots=(STORIES_DIR,), transformer_lens_forward=transformer_lens
    )
    loaded, _ = Planner(settings, store=None).model(STORIES_REF, "cpu")  # type: ignore[arg-type]
    assert (loaded.fast is None) == transformer_lens
    assert (loaded.model is None) != transformer_lens  # one forward built, never both


@needs_stories
def test_the_lean_forward_never_imports_transformer_lens() -> None:
    code = (
        "import sys\n"
        "from mistudio_compute.model_access import load_model\n"
        f"loaded = load_model({STORIES_REF!r}, 'cpu')\n"
        "assert loaded.fast is not None\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformer_lens'))\n"
    )
    here = Path(mistudio_compute.__file__).parents[1]  # the code under test, not an install
    paths = os.pathsep.join([str(here), *(p for p in sys.path if p)])
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": paths},
        check=True,
    )
    assert run.stdout.strip() == "[]"


@needs_stories
@pytest.mark.parametrize(
    "point",
    [HookPoint(1, kind) for kind in (HookKind.RESID_POST, HookKind.MLP_POST, HookKind.ATTN_Z)],
    ids=str,
)
def test_the_lean_models_logit_lens_reads_transformer_lens_exact_weights(
    stories: LoadedModel, reference: LoadedModel, point: HookPoint
) -> None:
    rows = torch.randn(5, stories.hook_width(point), generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        unembed_directions(stories, point, rows), unembed_directions(reference, point, rows)
    )
    assert torch.equal(unembedding_matrix(stories), unembedding_matrix(reference))


@needs_stories
@pytest.mark.parametrize("lean", [True, False], ids=["lean forward", "TransformerLens"])
def test_captures_run_at_once_on_the_lean_forward_and_take_turns_on_transformer_lens(
    stories: LoadedModel, reference: LoadedModel, tokens: torch.Tensor, lean: bool
) -> None:
    """A pass reads ahead on several threads, and jobs share a cached model: TransformerLens's
    hooks are attached to the model for a call, the lean forward keeps nothing between calls."""
    model, point = (stories if lean else reference), parse_hook_name("blocks.2.hook_resid_post")
    lock = threading.Lock()
    reader = HookActivations(model, point, None, lock)
    with ThreadPoolExecutor(1) as other, lock:  # another capture holds the model
        capture = other.submit(reader.activations, tokens)
        done, _ = wait([capture], timeout=30 if lean else 1)  # lean: done at once
        assert bool(done) == lean
    assert torch.equal(capture.result(timeout=60), capture_hook(model, tokens, point))

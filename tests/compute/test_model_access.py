"""Model access on a tiny seeded HookedTransformer: capture, stop_at_layer, logit-lens maps."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from mistudio_common.errors import FailedPrecondition, InvalidArgument
from mistudio_compute.model_access import (
    LoadedModel,
    capture_hook,
    load_model,
    resolve_device,
    unembed_directions,
    unembedding_matrix,
)
from mistudio_compute.references import parse_llama2c_ref

from tests.compute.builders import TINY_D_MODEL, TINY_VOCAB, tiny_model


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def tiny_gqa() -> LoadedModel:
    return tiny_model(seed=1, n_key_value_heads=2)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))


def test_wrapped_model_reports_its_dimensions(tiny: LoadedModel) -> None:
    assert (tiny.name, tiny.d_vocab, tiny.n_layers, tiny.d_model) == ("tiny-model", 64, 2, 32)
    assert (tiny.bos_token_id, tiny.eos_token_id, tiny.pad_token_id) == (1, 2, None)
    assert tiny.device == torch.device("cpu")


@pytest.mark.parametrize(
    "hook",
    ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"],
)
def test_capture_equals_run_with_cache(tiny: LoadedModel, tokens: torch.Tensor, hook: str) -> None:
    _, cache = tiny.model.run_with_cache(tokens, names_filter=hook)
    torch.testing.assert_close(capture_hook(tiny, tokens, hook), cache[hook])


def test_attention_hooks_are_flattened_over_heads(tiny: LoadedModel, tokens: torch.Tensor) -> None:
    hook = "blocks.1.attn.hook_z"
    _, cache = tiny.model.run_with_cache(tokens, names_filter=hook)
    z = cache[hook]  # [batch, pos, n_heads, d_head]
    captured = capture_hook(tiny, tokens, hook)
    assert captured.shape == (3, 10, 32)
    torch.testing.assert_close(captured, z.reshape(3, 10, 32))
    torch.testing.assert_close(capture_hook(tiny, tokens, hook, head_index=2), z[:, :, 2])


def test_grouped_query_keys_have_kv_width(tiny_gqa: LoadedModel, tokens: torch.Tensor) -> None:
    assert tiny_gqa.hook_width("blocks.0.attn.hook_k") == 16
    assert capture_hook(tiny_gqa, tokens, "blocks.0.attn.hook_k").shape == (3, 10, 16)
    assert capture_hook(tiny_gqa, tokens, "blocks.0.attn.hook_q").shape == (3, 10, 32)


def test_later_layers_are_not_computed(tiny: LoadedModel, tokens: torch.Tensor) -> None:
    calls: list[str] = []
    tiny.model.add_hook(
        "blocks.1.hook_resid_pre", lambda act, hook: calls.append(hook.name), is_permanent=True
    )
    try:
        capture_hook(tiny, tokens, "blocks.0.hook_resid_post")
        assert calls == []  # stop_at_layer=1: block 1 never ran
        capture_hook(tiny, tokens, "blocks.1.hook_mlp_out")
        assert calls == ["blocks.1.hook_resid_pre"]
    finally:
        tiny.model.reset_hooks(including_permanent=True)


def test_capture_rejects_bad_hooks_and_tokens(tiny: LoadedModel, tokens: torch.Tensor) -> None:
    with pytest.raises(InvalidArgument) as err:
        capture_hook(tiny, tokens, "blocks.2.hook_resid_post")
    assert err.value.field == "hook_point"
    with pytest.raises(InvalidArgument, match="token ids"):
        capture_hook(tiny, tokens + TINY_VOCAB, "blocks.0.hook_resid_post")
    with pytest.raises(InvalidArgument, match="context"):
        capture_hook(tiny, torch.zeros(1, 40, dtype=torch.long), "blocks.0.hook_resid_post")
    with pytest.raises(InvalidArgument, match="integer"):
        capture_hook(tiny, tokens.float(), "blocks.0.hook_resid_post")


def test_unembed_directions_is_identity_on_the_residual_stream(tiny: LoadedModel) -> None:
    rows = torch.randn(5, TINY_D_MODEL)
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"):
        torch.testing.assert_close(unembed_directions(tiny, hook, rows), rows)


def test_hook_z_rows_go_through_w_o(tiny: LoadedModel) -> None:
    rows = torch.randn(5, 32)  # [n, n_heads * d_head]
    W_O = tiny.model.blocks[1].attn.W_O  # [n_heads, d_head, d_model]
    expected = rows @ W_O.reshape(32, TINY_D_MODEL)
    torch.testing.assert_close(unembed_directions(tiny, "blocks.1.attn.hook_z", rows), expected)
    one_head = unembed_directions(tiny, "blocks.1.attn.hook_z", rows[:, :8], head_index=0)
    torch.testing.assert_close(one_head, rows[:, :8] @ W_O[0])


def test_logit_lens_is_undefined_for_queries_keys_values(tiny: LoadedModel) -> None:
    for hook in ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v"):
        with pytest.raises(InvalidArgument, match="logit lens is undefined"):
            unembed_directions(tiny, hook, torch.randn(2, 32))


def test_decoder_width_must_match_the_hook(tiny: LoadedModel) -> None:
    with pytest.raises(InvalidArgument) as err:
        unembed_directions(tiny, "blocks.0.hook_resid_post", torch.randn(2, 31))
    assert err.value.field == "W_dec"


def test_unembedding_matrix_is_w_u(tiny: LoadedModel) -> None:
    assert unembedding_matrix(tiny).shape == (TINY_D_MODEL, TINY_VOCAB)
    assert unembedding_matrix(tiny) is tiny.model.W_U


def test_auto_device_picks_cuda_only_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidArgument):
        resolve_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(FailedPrecondition):
            resolve_device("cuda:0")


def test_hub_model_offline_is_failed_precondition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    with pytest.raises(FailedPrecondition) as err:
        load_model("gpt2-small", device="cpu")
    assert "gpt2-small" in err.value.message
    assert "Hugging Face cache" in err.value.fix and "llama2c:" in err.value.fix


def test_unknown_model_name_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as err:
        load_model("definitely-not-a-model", device="cpu")
    assert err.value.field == "model_id"


def test_llama2c_reference_parsing() -> None:
    assert parse_llama2c_ref("llama2c:/m/a.bin?tokenizer=/t/tok.bin") == (
        Path("/m/a.bin"),
        Path("/t/tok.bin"),
    )
    assert parse_llama2c_ref("llama2c:/m/a.bin") == (Path("/m/a.bin"), Path("/m/tokenizer.bin"))
    with pytest.raises(InvalidArgument):
        parse_llama2c_ref("llama2c:?tokenizer=/t/tok.bin")

"""The real stories260K checkpoint and tokenizer, read from ../shared (never copied)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from mistudio_common.errors import InvalidArgument
from mistudio_compute.llama2c import read_llama2c_checkpoint, read_llama2c_tokenizer
from mistudio_compute.model_access import LoadedModel, capture_hook, load_model
from mistudio_compute.token_text import display_tokens

from tests.compute.builders import STORIES_MODEL, STORIES_REF, STORIES_TOKENIZER

pytestmark = pytest.mark.skipif(
    not (STORIES_MODEL.is_file() and STORIES_TOKENIZER.is_file()),
    reason=f"stories260K is not available at {STORIES_MODEL.parent}",
)


@pytest.fixture(scope="module")
def stories() -> LoadedModel:
    return load_model(STORIES_REF, device="cpu")


def _export_vocab(path: Path) -> tuple[list[bytes], list[float]]:
    """The raw llama2.c tokenizer export: (piece bytes, score) per id."""
    data, offset, pieces, scores = path.read_bytes(), 4, [], []
    while offset < len(data):
        score, length = struct.unpack_from("<fi", data, offset)
        pieces.append(data[offset + 8 : offset + 8 + length])
        scores.append(score)
        offset += 8 + length
    return pieces, scores


def _llama2c_encode(pieces: list[bytes], scores: list[float], text: str) -> list[int]:
    """A port of llama2.c run.c ``encode``: dummy prefix, characters or byte fallback (+3),
    then repeatedly merge the adjacent pair whose merged piece scores highest."""
    lookup = {p: i for i, p in enumerate(pieces)}
    tokens = [lookup[b" "]] if text else []
    for char in text:
        raw = char.encode()
        tokens += [lookup[raw]] if raw in lookup else [b + 3 for b in raw]
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            merged = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if merged is not None and scores[merged] > best:
                best, best_i, best_id = scores[merged], i, merged
        if best_i < 0:
            return tokens
        tokens[best_i : best_i + 2] = [best_id]


def test_checkpoint_header_is_read() -> None:
    cfg = read_llama2c_checkpoint(STORIES_MODEL).config
    assert (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (
        64,
        172,
        5,
        8,
        4,
    )
    assert (cfg.vocab_size, cfg.seq_len, cfg.shared_classifier) == (512, 512, True)


def test_tokenizer_is_a_real_sentencepiece_model() -> None:
    tok = read_llama2c_tokenizer(STORIES_TOKENIZER, vocab_size=512)
    assert tok.vocab_size == 512
    assert [tok.piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, None)
    assert tok.piece(3) == "<0x00>" and tok.processor.is_byte(3)


@pytest.mark.parametrize(
    "text",
    [
        "Once upon a time, there was a little girl named Lily.",
        "  two  spaces, digits 1234 and café ☃!",
        'Tom said: "Let\'s go!"\nThe end.',
    ],
)
def test_tokenizer_matches_llama2c_encoder(text: str) -> None:
    tok = read_llama2c_tokenizer(STORIES_TOKENIZER)
    pieces, scores = _export_vocab(STORIES_TOKENIZER)
    assert tok.encode(text) == _llama2c_encode(pieces, scores, text)
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("transformer_lens", [False, True], ids=["lean", "transformer_lens"])
def test_next_token_after_once_upon_a_time(stories: LoadedModel, transformer_lens: bool) -> None:
    tok = stories.tokenizer
    assert tok is not None and stories.bos_token_id == 1
    ids = [1, *tok.encode("Once upon a time, there was a little")]
    with torch.inference_mode():
        if transformer_lens:
            model = load_model(STORIES_REF, "cpu", transformer_lens_forward=True).transformer
            logits = model(torch.tensor([ids]))
        else:
            assert stories.model is None and stories.fast is not None  # no TransformerLens
            logits = stories.fast.logits(torch.tensor([ids]))
        probs = logits[0, -1].softmax(-1)  # [d_vocab]
    top = probs.topk(2)
    assert [tok.piece(int(i)) for i in top.indices] == ["▁g", "▁b"]
    assert top.values.tolist() == pytest.approx([0.64, 0.275], abs=0.01)
    assert display_tokens(tok, ids)[:3] == ["<s>", " Once", " upon"]


def test_loaded_model_describes_stories(stories: LoadedModel) -> None:
    assert (stories.name, stories.d_vocab, stories.n_layers, stories.d_model) == (
        "stories260K",
        512,
        5,
        64,
    )
    assert stories.ref == STORIES_REF
    assert stories.hook_width("blocks.2.attn.hook_k") == 32  # 4 KV heads of 8 (GQA)


def test_capture_on_grouped_query_keys(stories: LoadedModel) -> None:
    tokens = torch.tensor([[1, 403, 407, 261]])
    assert capture_hook(stories, tokens, "blocks.1.attn.hook_v").shape == (1, 4, 32)
    assert capture_hook(stories, tokens, "blocks.4.hook_resid_post").shape == (1, 4, 64)


def test_truncated_checkpoint_is_invalid_argument(tmp_path: Path) -> None:
    bad = tmp_path / "short.bin"
    bad.write_bytes(STORIES_MODEL.read_bytes()[:5000])
    with pytest.raises(InvalidArgument) as err:
        read_llama2c_checkpoint(bad)
    assert err.value.field == "model_id" and "expected 264128 fp32 weights" in err.value.message


def test_versioned_export_is_refused_with_a_fix(tmp_path: Path) -> None:
    bad = tmp_path / "v1.bin"
    bad.write_bytes(struct.pack("<Ii", 0x616B3432, 1) + bytes(256))
    with pytest.raises(InvalidArgument) as err:
        read_llama2c_checkpoint(bad)
    assert "--version 0" in err.value.fix


def test_tokenizer_size_must_match_the_model() -> None:
    with pytest.raises(InvalidArgument) as err:
        read_llama2c_tokenizer(STORIES_TOKENIZER, vocab_size=32000)
    assert err.value.field == "tokenizer"


def test_missing_files_are_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        load_model(f"llama2c:{tmp_path / 'nope.bin'}?tokenizer={STORIES_TOKENIZER}", "cpu")
    assert err.value.field == "model_id"
    with pytest.raises(InvalidArgument) as err:
        load_model(f"llama2c:{STORIES_MODEL}", "cpu")  # no tokenizer.bin next to it
    assert err.value.field == "tokenizer"

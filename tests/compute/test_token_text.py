"""Readable token strings: SentencePiece and GPT-2 byte-level pieces, byte runs, bad UTF-8."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from mistudio_compute.llama2c import SentencePieceTokenizer, sentencepiece_bpe_model
from mistudio_compute.token_text import (
    HfTokenizer,
    PieceStyle,
    TokenDisplay,
    display_token,
    display_tokens,
    piece_bytes,
    vocab_display_strings,
)

NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


@pytest.fixture(scope="module")
def sp() -> SentencePieceTokenizer:
    """unk/bos/eos, the 256 byte pieces, then a few words: byte fallback covers the rest."""
    pieces = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL)]
    pieces += [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    words = ["▁", "a", "c", "e", "f", "h", "t", "▁t", "he", "▁the", "▁c", "af", "▁caf"]
    pieces += [(w, -float(i), NORMAL) for i, w in enumerate(words)]
    return SentencePieceTokenizer.from_model_proto(sentencepiece_bpe_model(pieces))


@pytest.fixture(scope="module")
def gpt2_style() -> HfTokenizer:
    """A GPT-2-style byte-level BPE, trained in memory on a few words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the cat sat on the mat\nthe dog"] * 10, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    return HfTokenizer(hf)


def test_sentencepiece_space_marker_becomes_a_space(sp: SentencePieceTokenizer) -> None:
    ids = sp.encode("the caf")
    assert display_tokens(sp, ids) == [" the", " caf"]


def test_special_tokens_keep_their_names(sp: SentencePieceTokenizer) -> None:
    assert sp.bos_id == 1 and sp.eos_id == 2
    assert display_tokens(sp, [1, *sp.encode("the"), 2, 0]) == ["<s>", " the", "</s>", "<unk>"]


def test_byte_fallback_run_is_decoded_on_the_completing_token(sp: SentencePieceTokenizer) -> None:
    ids = sp.encode("café")  # "é" is not a piece: <0xC3><0xA9>
    assert [sp.piece(i) for i in ids] == ["▁caf", "<0xC3>", "<0xA9>"]
    assert display_tokens(sp, ids) == [" caf", "<0xC3>", "é"]
    assert "".join(display_tokens(sp, sp.encode("☃"))).endswith("☃")


def test_four_byte_character_over_four_tokens(sp: SentencePieceTokenizer) -> None:
    ids = sp.encode("😀")[1:]  # drop the dummy-prefix "▁"
    assert display_tokens(sp, ids) == ["<0xF0>", "<0x9F>", "<0x98>", "😀"]


def test_invalid_utf8_never_raises_and_never_drops_a_token(sp: SentencePieceTokenizer) -> None:
    byte = {b: sp.processor.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    assert sp.piece(byte[0x80]) == "<0x80>"
    ids = [byte[0x80], byte[0xE2], byte[0x82], *sp.encode("the"), byte[0xFF], 1, byte[0xC3]]
    texts = display_tokens(sp, ids)
    assert len(texts) == len(ids) and all(texts)
    assert texts == ["<0x80>", "<0xE2>", "<0x82>", " the", "<0xFF>", "<s>", "<0xC3>"]


def test_special_token_interrupts_a_byte_run(sp: SentencePieceTokenizer) -> None:
    c3, a9 = sp.encode("é")[-2:]
    assert display_tokens(sp, [c3, 1, a9]) == ["<0xC3>", "<s>", "<0xA9>"]


def test_single_token_display_for_logit_tables(sp: SentencePieceTokenizer) -> None:
    newline = sp.encode("\n")[-1]
    assert display_token(sp, newline) == "\n"
    strings = vocab_display_strings(sp)
    assert len(strings) == sp.vocab_size and strings[1] == "<s>" and all(strings)


def test_out_of_vocabulary_id_is_shown_not_raised(sp: SentencePieceTokenizer) -> None:
    assert display_tokens(sp, [sp.vocab_size + 5]) == [f"<id:{sp.vocab_size + 5}>"]


def test_gpt2_byte_level_pieces_become_characters(gpt2_style: HfTokenizer) -> None:
    assert gpt2_style.piece_style is PieceStyle.BYTE_LEVEL
    ids = gpt2_style.encode("the cat\n")
    assert [gpt2_style.piece(i) for i in ids] == ["the", "Ġcat", "Ċ"]
    assert display_tokens(gpt2_style, ids) == ["the", " cat", "\n"]


def test_gpt2_character_split_over_byte_tokens(gpt2_style: HfTokenizer) -> None:
    ids = gpt2_style.encode("€")
    assert len(ids) == 3
    assert display_tokens(gpt2_style, ids) == ["<0xE2>", "<0x82>", "€"]
    assert display_tokens(gpt2_style, [gpt2_style.bos_id or 0, *ids[:2]])[0] == "<|endoftext|>"


def test_piece_bytes_per_style() -> None:
    assert piece_bytes("▁the", PieceStyle.SENTENCEPIECE) == b" the"
    assert piece_bytes("<0x0A>", PieceStyle.SENTENCEPIECE) == b"\n"
    assert piece_bytes("Ġthe", PieceStyle.BYTE_LEVEL) == b" the"
    assert piece_bytes("âĤ¬", PieceStyle.BYTE_LEVEL) == "€".encode()
    assert piece_bytes("plain", PieceStyle.PLAIN) == b"plain"


def test_control_bytes_are_shown_escaped_but_tab_and_newline_stay(
    sp: SentencePieceTokenizer,
) -> None:
    byte = {b: sp.processor.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
    ids = [byte[0x1A], byte[0x00], byte[0x09], byte[0x0A], byte[0x7F], byte[0xC2], byte[0x85]]
    texts = display_tokens(sp, ids)
    assert texts == ["<0x1A>", "<0x00>", "\t", "\n", "<0x7F>", "<0xC2>", "<0x85>"]
    assert display_token(sp, byte[0x1A]) == "<0x1A>"


def test_no_vocabulary_string_needs_the_validators_repair(sp: SentencePieceTokenizer) -> None:
    from mistudio_common.token_display import escape_controls

    assert all(escape_controls(s) == s for s in vocab_display_strings(sp))


@pytest.mark.parametrize("name", ["sp", "gpt2_style"])
def test_cached_display_equals_decoding_the_whole_window(name: str, request) -> None:
    tok = request.getfixturevalue(name)
    rng = np.random.default_rng(0)
    display = TokenDisplay(tok)
    text = tok.encode("the café ☃ 😀 €\n")
    for a in range(len(text)):  # every slice cuts some character's bytes apart
        assert display.window(text[a:]) == display_tokens(tok, text[a:])
    for _ in range(300):
        ids = rng.integers(-1, tok.vocab_size + 2, size=int(rng.integers(1, 12))).tolist()
        assert display.window(ids) == display_tokens(tok, ids), ids


@pytest.mark.parametrize("name", ["sp", "gpt2_style"])
def test_windows_laid_end_to_end_display_as_each_window_alone(name: str, request) -> None:
    tok = request.getfixturevalue(name)
    rng = np.random.default_rng(1)
    text = tok.encode("the café ☃ 😀 €\n")
    windows = [text[a : a + int(rng.integers(1, 6))] for a in range(len(text))]
    windows += [rng.integers(-1, tok.vocab_size + 2, size=5).tolist() for _ in range(100)]
    expected = [s.encode() for w in windows for s in display_tokens(tok, w)]
    flat = np.array([i for w in windows for i in w], np.int64)
    display = TokenDisplay(tok)
    for _ in range(2):  # the ids' bytes learnt, then read from the table
        text, lengths = display.windows_utf8(flat, np.array([len(w) for w in windows]))
        assert text.tobytes() == b"".join(expected)
        assert lengths.tolist() == [len(s) for s in expected]


def test_windows_shown_on_several_threads_at_once_match_one_thread(
    sp: SentencePieceTokenizer,
) -> None:
    """Finalisation shows windows on several threads with one display: a thread learning new
    ids must never hand another a table whose lengths point past its bytes."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        rng = np.random.default_rng(2)
        batches = [rng.integers(0, sp.vocab_size, size=(200, 4)) for _ in range(8)]
        expected = [b"".join(s.encode() for w in b.tolist() for s in display_tokens(sp, w))
                    for b in batches]  # fmt: skip
        for _ in range(20):
            display = TokenDisplay(sp)
            windows = [(b.ravel(), np.full(len(b), 4)) for b in batches]
            with ThreadPoolExecutor(len(batches)) as pool:
                shown = list(pool.map(display.windows_utf8, *zip(*windows, strict=True)))
            assert [text.tobytes() for text, _ in shown] == expected
    finally:
        sys.setswitchinterval(interval)

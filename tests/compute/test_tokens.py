"""Token datasets: token files with provenance, text files, fingerprints, batches, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mistudio_common.dashboard import SourceRef
from mistudio_common.errors import InvalidArgument
from mistudio_compute.llama2c import SentencePieceTokenizer
from mistudio_compute.tokens import (
    TokenDataset,
    TokenSourceSpec,
    load_token_file,
    load_token_source,
    tokenize_text_files,
    write_token_file,
)
from safetensors.numpy import save_file

from tests.compute.builders import tiny_tokenizer

LINES = ["the cat sat on the mat", "", "a dog and a hen", "the end"]


def assert_every_token_traces_to_its_document(
    data: TokenDataset, documents: dict[tuple[int, int], list[int]], bos: int
) -> None:
    """Every text token of every row is token ``offset`` of the document ``locate`` names (a BOS
    is a row's or a separator, no document's token)."""
    for row in range(data.n_rows):
        for position, token in enumerate(data.tokens[row].tolist()):
            if token != bos:
                source, origin, offset = data.locate(row, position)
                document = documents[(source, origin)]
                assert 0 <= offset < len(document), (row, position, source, origin, offset)
                assert document[offset] == token, (row, position, source, origin, offset)


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return tiny_tokenizer()


def _tokens(rows: int = 6, width: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 64, size=(rows, width), dtype=np.int64)


def test_npy_file_loads_with_default_provenance(tmp_path: Path) -> None:
    np.save(tmp_path / "toks.npy", _tokens())
    data = load_token_file(tmp_path / "toks.npy")
    assert (data.n_rows, data.context_size, data.n_tokens) == (6, 8, 48)
    assert data.tokens.dtype == np.int32 and data.dataset_name == "toks"
    assert data.source_ref(4, position=3) == SourceRef(dataset="toks", row=4, offset=3)


def test_safetensors_file_needs_a_tokens_tensor(tmp_path: Path) -> None:
    save_file({"tokens": _tokens().astype(np.int32)}, str(tmp_path / "t.safetensors"))
    assert load_token_file(tmp_path / "t.safetensors", dataset_name="mine").dataset_name == "mine"
    save_file({"ids": _tokens()}, str(tmp_path / "u.safetensors"))
    with pytest.raises(InvalidArgument) as err:
        load_token_file(tmp_path / "u.safetensors")
    assert err.value.field == "tokens.token_file" and "'tokens'" in err.value.message


def test_provenance_file_round_trips(tmp_path: Path) -> None:
    provenance = {"sources": ["a", "b"], "source_index": [0, 1, 1], "row": [7, 8, 9]}
    data = TokenDataset.from_array(
        _tokens(3), "mix", provenance=provenance | {"offset": [0, 128, 256]}
    )
    path = write_token_file(data, tmp_path / "mix.npy")
    assert json.loads((tmp_path / "mix.npy.provenance.json").read_text())["sources"] == ["a", "b"]
    loaded = load_token_file(path, dataset_name="mix")
    assert loaded.source_ref(2, 5) == SourceRef(dataset="b", row=9, offset=261)
    assert loaded.fingerprint == data.fingerprint


def test_written_text_rows_keep_their_bos_flag_and_document_breaks(
    tmp_path: Path, tok: SentencePieceTokenizer
) -> None:
    (tmp_path / "a.txt").write_text("\n".join(LINES))
    data = tokenize_text_files([tmp_path / "a.txt"], tok, context_size=7)
    loaded = load_token_file(write_token_file(data, tmp_path / "a.npy"))  # flag not passed
    assert loaded.prepend_bos and loaded.fingerprint == data.fingerprint
    assert [loaded.locate(r, p) for r in range(data.n_rows) for p in range(7)] == [
        data.locate(r, p) for r in range(data.n_rows) for p in range(7)
    ]


def test_provenance_must_describe_every_row(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", _tokens(3))
    bad = {"sources": ["a"], "source_index": [0, 0], "row": [0, 1], "offset": [0, 0]}
    (tmp_path / "t.npy.provenance.json").write_text(json.dumps(bad))
    with pytest.raises(InvalidArgument) as err:
        load_token_file(tmp_path / "t.npy")
    assert err.value.field == "tokens.token_file"


def test_fingerprint_covers_tokens_context_and_bos() -> None:
    base = TokenDataset.from_array(_tokens(), "x")
    assert base.fingerprint == TokenDataset.from_array(_tokens(), "renamed").fingerprint
    assert len(base.fingerprint) == 64
    assert base.fingerprint != TokenDataset.from_array(_tokens(seed=1), "x").fingerprint
    assert base.fingerprint != TokenDataset.from_array(_tokens(), "x", prepend_bos=True).fingerprint
    reshaped = TokenDataset.from_array(_tokens().reshape(12, 4), "x")
    assert base.fingerprint != reshaped.fingerprint  # same bytes, other context


def test_rows_are_cut_to_context_size_and_limited_by_max_tokens(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", _tokens())
    data = load_token_file(tmp_path / "t.npy", context_size=5, max_tokens=12)
    assert data.tokens.shape == (2, 5)
    np.testing.assert_array_equal(data.tokens, _tokens()[:2, :5])
    with pytest.raises(InvalidArgument) as err:
        load_token_file(tmp_path / "t.npy", context_size=9)
    assert err.value.field == "tokens.context_size"


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((3, 4), np.float32), "integers"),
        (np.zeros(12, np.int32), "shape"),
        (np.zeros((0, 4), np.int32), "shape"),
        (np.full((2, 4), -1, np.int32), "negative"),
    ],
)
def test_bad_token_arrays_are_invalid_argument(
    tmp_path: Path, array: np.ndarray, message: str
) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(InvalidArgument, match=message) as err:
        load_token_file(tmp_path / "bad.npy")
    assert err.value.field == "tokens.token_file" and err.value.fix


def test_missing_or_unknown_files_are_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_token_file(tmp_path / "absent.npy")
    (tmp_path / "t.txt").write_text("1 2 3")
    with pytest.raises(InvalidArgument, match="neither"):
        load_token_file(tmp_path / "t.txt")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_token_file(tmp_path / "broken.npy")


def test_ids_beyond_the_vocabulary_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", _tokens() + 10)
    spec = TokenSourceSpec(token_file=str(tmp_path / "t.npy"))
    with pytest.raises(InvalidArgument) as err:
        load_token_source(spec, d_vocab=64)
    assert err.value.field == "tokens.token_file" and "64" in err.value.message
    assert load_token_source(spec, d_vocab=80).n_rows == 6


def test_batches_cover_every_row_once() -> None:
    data = TokenDataset.from_array(_tokens(7), "x")
    batches = list(data.iter_batches(3))
    assert [start for start, _ in batches] == [0, 3, 6]
    assert all(b.dtype == torch.int64 for _, b in batches)
    assert torch.equal(torch.cat([b for _, b in batches]), torch.from_numpy(_tokens(7)))
    assert [s for s, _ in data.iter_batches(3, start_row=4)] == [4]
    with pytest.raises(InvalidArgument):
        next(data.iter_batches(0))


def test_text_lines_become_bos_rows_with_line_provenance(
    tmp_path: Path, tok: SentencePieceTokenizer
) -> None:
    (tmp_path / "stories.txt").write_text("\n".join(LINES))
    data = tokenize_text_files([tmp_path / "stories.txt"], tok, context_size=6, prepend_bos=True)
    docs = [tok.encode(line) for line in LINES if line]
    stream = docs[0] + [1] + docs[1] + [1] + docs[2]  # documents separated by BOS
    assert data.tokens.shape == (len(stream) // 5, 6)
    assert (data.tokens[:, 0] == 1).all()
    np.testing.assert_array_equal(data.tokens[:, 1:].ravel(), stream[: data.n_rows * 5])
    assert data.dataset_name == "stories"
    assert data.source_ref(0, 1) == SourceRef("stories.txt", 0, 0)  # after the prepended BOS
    assert data.source_ref(1, 1) == SourceRef("stories.txt", 0, 5)  # line 0, tokens 5.. of it


def test_tokens_after_a_mid_row_bos_trace_to_the_next_document(
    tmp_path: Path, tok: SentencePieceTokenizer
) -> None:
    (tmp_path / "a.txt").write_text("\n".join(LINES))
    (tmp_path / "b.txt").write_text("the hen sat\n\nthe dog ran on the mat\n")
    data = tokenize_text_files([tmp_path / "a.txt", tmp_path / "b.txt"], tok, context_size=7)
    documents = {
        (source, line): tok.encode(text)
        for source, name in enumerate(("a.txt", "b.txt"))
        for line, text in enumerate((tmp_path / name).read_text().splitlines())
        if text
    }
    assert (data.tokens[:, 1:] == 1).any()  # some rows do pack two documents
    assert_every_token_traces_to_its_document(data, documents, bos=1)
    assert {data.locate(r, 6)[1] for r in range(data.n_rows)} >= {0, 2}  # blank line 1 skipped


def test_text_without_bos_and_with_max_tokens(tmp_path: Path, tok: SentencePieceTokenizer) -> None:
    (tmp_path / "a.txt").write_text("\n".join(LINES))
    (tmp_path / "b.txt").write_text("the cat and the dog\n" * 5)
    data = tokenize_text_files(
        [tmp_path / "a.txt", tmp_path / "b.txt"], tok, context_size=4, prepend_bos=False
    )
    assert 1 not in data.tokens and data.sources == ("a.txt", "b.txt")
    assert data.source_ref(data.n_rows - 1, 0).dataset == "b.txt"
    limited = tokenize_text_files(
        [tmp_path / "a.txt", tmp_path / "b.txt"], tok, context_size=4, max_tokens=9
    )
    assert limited.tokens.shape == (2, 4)


def test_text_too_short_or_missing_is_invalid_argument(
    tmp_path: Path, tok: SentencePieceTokenizer
) -> None:
    (tmp_path / "short.txt").write_text("the\n")
    with pytest.raises(InvalidArgument) as err:
        tokenize_text_files([tmp_path / "short.txt"], tok, context_size=128)
    assert err.value.field == "tokens.text.paths"
    with pytest.raises(InvalidArgument, match="cannot read"):
        tokenize_text_files([tmp_path / "absent.txt"], tok)


def test_token_source_needs_exactly_one_source(tok: SentencePieceTokenizer) -> None:
    with pytest.raises(InvalidArgument):
        load_token_source(TokenSourceSpec())
    with pytest.raises(InvalidArgument):
        load_token_source(TokenSourceSpec(token_file="a.npy", text_paths=["b.txt"]))
    with pytest.raises(InvalidArgument, match="tokenizer"):
        load_token_source(TokenSourceSpec(text_paths=["b.txt"]), tokenizer=None)


def test_npy_header_claiming_more_than_the_file_holds_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "liar.npy"
    with path.open("wb") as handle:
        header = {"descr": "<i4", "fortran_order": False, "shape": (10_000_000, 1024)}
        np.lib.format.write_array_header_1_0(handle, header)  # claims 40 GB
        handle.write(np.zeros((4, 8), np.int32).tobytes())
    with pytest.raises(InvalidArgument, match="claims 40960000000 bytes") as err:
        load_token_file(path)
    assert err.value.field == "tokens.token_file"

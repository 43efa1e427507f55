"""The sampled corpus: rows that start with BOS, valid ids, provenance, seeded and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_compute.model_access import LoadedModel, load_model
from mistudio_compute.tokens import TokenDataset, load_token_file
from mistudio_compute.training.corpus import CorpusSpec, ensure_corpus, pack_rows, sample_corpus
from mistudio_compute.training.sampling import split_stories

from tests.compute.builders import STORIES_MODEL, STORIES_REF, STORIES_TOKENIZER
from tests.compute.test_tokens import assert_every_token_traces_to_its_document

needs_stories = pytest.mark.skipif(
    not (STORIES_MODEL.is_file() and STORIES_TOKENIZER.is_file()),
    reason=f"stories260K is not available at {STORIES_MODEL.parent}",
)
SPEC = CorpusSpec(rows=6, context=32, seed=7, stream_tokens=64)


@pytest.fixture(scope="module")
def stories() -> LoadedModel:
    return load_model(STORIES_REF, device="cpu")


def test_streams_split_into_stories_at_bos_and_eos() -> None:
    assert split_stories([1, 5, 6, 1, 7, 2, 2, 8], {1, 2}) == [[5, 6], [7], [8]]


def test_rows_start_with_bos_and_point_back_to_their_story() -> None:
    stories = [[10, 11, 12, 13, 14], [20, 21, 22], [30, 31, 32, 33]]
    tokens, story, offset, _ = pack_rows(stories, rows=3, context=4, bos=1)
    # stream: 10 11 12 | 13 14 BOS | 20 21 22 | ... ; rows take 3 text tokens after their BOS
    assert tokens.tolist() == [[1, 10, 11, 12], [1, 13, 14, 1], [1, 20, 21, 22]]
    assert story.tolist() == [0, 0, 1]
    assert offset.tolist() == [0, 3, 0]


def test_every_packed_token_traces_to_its_story() -> None:
    stories = [[10, 11, 12, 13, 14], [20, 21], [30, 31, 32, 33, 34, 35, 36], [40, 41, 42]]
    tokens, story, offset, breaks = pack_rows(stories, rows=4, context=5, bos=1)
    dataset = TokenDataset(tokens, "s", True, ("s",), np.zeros(4, np.int32), story, offset, breaks)
    documents = {(0, i): s for i, s in enumerate(stories)}
    assert_every_token_traces_to_its_document(dataset, documents, bos=1)
    assert dataset.locate(1, 3) == (0, 1, 0)  # story 1 begins after the BOS at position 2


def test_too_few_stories_are_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="cannot fill"):
        pack_rows([[5, 6]], rows=2, context=4, bos=1)


@needs_stories
def test_sampled_rows_start_with_bos_and_use_the_vocabulary(stories: LoadedModel) -> None:
    dataset, texts = sample_corpus(stories, SPEC)
    assert dataset.tokens.shape == (SPEC.rows, SPEC.context)
    assert dataset.tokens.dtype == np.int32
    assert (dataset.tokens[:, 0] == 1).all()
    assert int(dataset.tokens.min()) >= 0 and int(dataset.tokens.max()) < 512
    assert texts and all(isinstance(t, str) and t for t in texts)
    assert "seed 7" in dataset.source_ref(0, 1).dataset
    assert stories.tokenizer is not None
    documents = {(0, i): stories.tokenizer.encode(text) for i, text in enumerate(texts)}
    assert_every_token_traces_to_its_document(dataset, documents, bos=1)


@needs_stories
def test_same_seed_samples_the_same_rows(stories: LoadedModel) -> None:
    first, _ = sample_corpus(stories, SPEC)
    again, _ = sample_corpus(stories, SPEC)
    other, _ = sample_corpus(stories, CorpusSpec(rows=6, context=32, seed=8, stream_tokens=64))
    assert np.array_equal(first.tokens, again.tokens)
    assert not np.array_equal(first.tokens, other.tokens)


@needs_stories
def test_second_call_reuses_the_cached_folder(stories: LoadedModel, tmp_path: Path) -> None:
    calls: list[int] = []

    def model() -> LoadedModel:
        calls.append(1)
        return stories

    first = ensure_corpus(tmp_path, model, SPEC, model_sha256="m", tokenizer_sha256="t")
    mtime = first.token_file.stat().st_mtime_ns
    again = ensure_corpus(tmp_path, model, SPEC, model_sha256="m", tokenizer_sha256="t")
    assert (first.built, again.built, len(calls)) == (True, False, 1)
    assert again.token_file == first.token_file and again.token_file.stat().st_mtime_ns == mtime
    loaded = load_token_file(again.token_file, prepend_bos=True)  # the service's own reader
    assert loaded.fingerprint == again.info["fingerprint"]
    assert loaded.source_ref(2, 1).row >= 0 and again.stories_file.is_file()


@needs_stories
def test_another_model_file_gets_another_folder(stories: LoadedModel, tmp_path: Path) -> None:
    first = ensure_corpus(tmp_path, lambda: stories, SPEC, model_sha256="a", tokenizer_sha256="t")
    other = ensure_corpus(tmp_path, lambda: stories, SPEC, model_sha256="b", tokenizer_sha256="t")
    assert first.folder != other.folder and other.built

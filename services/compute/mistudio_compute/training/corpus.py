"""The demo's token corpus: stories sampled from the model itself, seeded and cached.

The stories are decoded to text and tokenized again, so the rows hold the tokenizer's canonical
ids for that text (what a user's own text would give), then packed as ``tokens`` packs text files:
one stream with BOS between stories, cut into rows of ``context`` tokens that each start with BOS.
The folder holds ``tokens.npy`` (int32 [rows, context]) with its ``tokens.npy.provenance.json``
(row r -> story line and token offset), ``stories.jsonl`` (one JSON string per story, the text
the rows came from) and ``corpus.json`` (what it was sampled from, and how long it took).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mistudio_common.errors import FailedPrecondition, InvalidArgument

from mistudio_compute.model_access import LoadedModel
from mistudio_compute.tokens import DocBreaks, TokenDataset, load_token_file, write_token_file
from mistudio_compute.training.cache import (
    build_folder,
    cache_key,
    cached_folder,
    is_complete,
    write_json,
)
from mistudio_compute.training.sampling import story_batches

CORPUS_FORMAT = 2
"""Bump when sampling or packing changes, so old cache folders are not reused."""
TOKENS_FILE = "tokens.npy"
STORIES_FILE = "stories.jsonl"
INFO_FILE = "corpus.json"

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class CorpusSpec:
    """What to sample; every field is part of the cache key."""

    rows: int = 2048
    context: int = 128
    seed: int = 0
    temperature: float = 0.8
    """Below 1 the stories are more coherent, which makes cleaner features."""
    stream_tokens: int = 256
    """Tokens per sampled stream; shorter streams are cheaper (attention grows with length)."""
    batch_streams: int = 256

    def __post_init__(self) -> None:
        checks = {
            "rows": self.rows >= 1,
            "context": self.context >= 2,
            "temperature": self.temperature > 0,
            "stream_tokens": self.stream_tokens >= 2,
            "batch_streams": self.batch_streams >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidArgument(
                    f"corpus {name} = {getattr(self, name)} is out of range",
                    field=f"corpus.{name}",
                    fix="use positive sizes (context >= 2) and a positive temperature",
                )


@dataclass(frozen=True)
class Corpus:
    """A built or reused corpus folder."""

    folder: Path
    key: str
    built: bool
    """False when the folder came from the cache."""
    info: dict[str, Any]

    @property
    def token_file(self) -> Path:
        return self.folder / TOKENS_FILE

    @property
    def stories_file(self) -> Path:
        return self.folder / STORIES_FILE

    def load(self) -> TokenDataset:
        return load_token_file(
            self.token_file, dataset_name=self.info["dataset_name"], prepend_bos=True
        )


def corpus_key(spec: CorpusSpec, model_sha256: str, tokenizer_sha256: str) -> str:
    return cache_key(
        {"format": CORPUS_FORMAT, "model": model_sha256, "tokenizer": tokenizer_sha256}
        | asdict(spec)
    )


def ensure_corpus(
    cache_dir: Path,
    model: Callable[[], LoadedModel],
    spec: CorpusSpec,
    *,
    model_sha256: str,
    tokenizer_sha256: str,
    progress: ProgressFn | None = None,
) -> Corpus:
    """The cached corpus for (model, tokenizer, spec), sampled first if it is not there yet.

    ``model`` is called only when sampling is needed, so a cached corpus costs no model load.
    """
    key = corpus_key(spec, model_sha256, tokenizer_sha256)
    folder = cached_folder(cache_dir, "corpus", key)
    built = not is_complete(folder)
    if built:

        def build(tmp: Path) -> None:
            started = time.perf_counter()
            loaded = model()
            dataset, stories = sample_corpus(loaded, spec, progress=progress)
            write_token_file(dataset, tmp / TOKENS_FILE)
            lines = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in stories)
            (tmp / STORIES_FILE).write_text(lines, encoding="utf-8")
            info = {
                "dataset_name": dataset.dataset_name,
                "model_name": loaded.name,
                "model_sha256": model_sha256,
                "tokenizer_sha256": tokenizer_sha256,
                "spec": asdict(spec),
                "n_stories": len(stories),
                "fingerprint": dataset.fingerprint,
                "seconds": round(time.perf_counter() - started, 2),
                "torch_threads": torch.get_num_threads(),
            }
            write_json(tmp / INFO_FILE, info)

        build_folder(folder, build)
    info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    return Corpus(folder=folder, key=key, built=built, info=info)


def sample_corpus(
    loaded: LoadedModel, spec: CorpusSpec, *, progress: ProgressFn | None = None
) -> tuple[TokenDataset, list[str]]:
    """Samples stories until they fill ``spec.rows`` rows; returns the rows and the story texts."""
    tokenizer = loaded.tokenizer
    bos = loaded.bos_token_id
    if loaded.fast is None:
        raise InvalidArgument(
            f"model {loaded.name!r} is not a llama2.c-style model, which the story sampler needs",
            field="model_id",
            fix="sample the corpus from a llama2c:<model.bin>?tokenizer=<tok.bin> model",
        )
    if tokenizer is None or bos is None:
        raise FailedPrecondition(
            f"model {loaded.name!r} has no tokenizer with a BOS token to sample stories with",
            field="tokenizer",
            fix="load the model with its tokenizer (llama2c:<model.bin>?tokenizer=<tok.bin>)",
        )
    stop_ids = {bos} | ({loaded.eos_token_id} if loaded.eos_token_id is not None else set())
    body = spec.context - 1  # tokens per row after its BOS
    needed = spec.rows * body
    texts: list[str] = []
    encoded: list[list[int]] = []
    stream_len = 0
    batches = story_batches(
        loaded.fast,
        seed=spec.seed,
        bos_id=bos,
        stop_ids=stop_ids,
        temperature=spec.temperature,
        stream_tokens=spec.stream_tokens,
        # Small corpora need fewer streams than a full batch (+5% for re-tokenization drift).
        batch_streams=min(
            spec.batch_streams, -(-needed * 21 // 20 // (spec.stream_tokens - 1)) + 1
        ),
    )
    while stream_len < needed:
        for story in next(batches):
            text = tokenizer.decode(story)
            ids = tokenizer.encode(text)
            if ids:
                texts.append(text)
                encoded.append(ids)
                stream_len += len(ids) + 1  # + the BOS separator
        if progress is not None:
            progress(f"sampled {min(stream_len, needed)}/{needed} tokens ({len(texts)} stories)")
    tokens, story_index, offset, breaks = pack_rows(encoded, spec.rows, spec.context, bos)
    name = f"{loaded.name}-samples-seed{spec.seed}"
    source = (
        f"{STORIES_FILE}: stories sampled from {loaded.name} (seed {spec.seed}, "
        f"temperature {spec.temperature}); row = story line, offset = token in that story"
    )
    dataset = TokenDataset(
        tokens, name, True, (source,), np.zeros(spec.rows, np.int32), story_index, offset, breaks
    )
    return dataset, texts


def pack_rows(
    stories: list[list[int]], rows: int, context: int, bos: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any], DocBreaks]:
    """Packs stories as ``tokens.tokenize_text_files`` packs documents.

    Returns tokens int32 [rows, context]; per row the story its first text token belongs to and
    that token's offset in the story (int64 [rows] each); and where each story begins.
    """
    body = context - 1
    starts: list[int] = []  # [stories], stream position of each story's first token
    stream: list[int] = []
    for i, story in enumerate(stories):
        if len(stream) >= rows * body:
            break
        if i:
            stream.append(bos)
        starts.append(len(stream))
        stream.extend(story)
    if len(stream) < rows * body:
        raise InvalidArgument(
            f"{len(stream)} tokens cannot fill {rows} rows of {context}",
            field="corpus.rows",
            fix="sample more stories",
        )
    text = np.asarray(stream[: rows * body], dtype=np.int32).reshape(rows, body)
    tokens = np.concatenate([np.full((rows, 1), bos, np.int32), text], axis=1)
    row_start = np.arange(rows, dtype=np.int64) * body  # [rows]
    row_story = np.searchsorted(np.asarray(starts), row_start, side="right") - 1  # [rows]
    offset = np.maximum(row_start - np.asarray(starts)[row_story], 0)  # a row may open on a BOS
    breaks = DocBreaks.of_stream(starts, [0] * len(starts), range(len(starts)), body, 1, rows)
    return tokens, row_story.astype(np.int64), offset.astype(np.int64), breaks

"""Seeded temperature sampling of stories from a llama2.c model.

TinyStories itself is not reachable offline, so the demo's text comes from the model: batches of
streams start at BOS and are sampled token by token; whenever the model emits BOS or EOS a story
ends and (as in its training data, where stories are concatenated with BOS between them) the
stream goes on with the next one. A stream stops at ``stream_tokens``, so the last story of each
stream is cut at that length.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mistudio_compute.fast_llama import FastLlama


@torch.inference_mode()
def sample_streams(
    model: FastLlama,
    *,
    n_streams: int,
    stream_tokens: int,
    bos_id: int,
    generator: torch.Generator,
    temperature: float = 1.0,
) -> torch.Tensor:
    """[n_streams, stream_tokens] token ids, each row starting with BOS (module docstring)."""
    cache = model.new_cache(n_streams, stream_tokens)
    out = torch.empty(n_streams, stream_tokens, dtype=torch.long)
    out[:, 0] = bos_id
    current = out[:, :1]  # [streams, 1]
    for pos in range(1, stream_tokens):
        logits = model.logits(current, cache)[:, -1]  # [streams, d_vocab]
        probs = torch.softmax(logits / temperature, dim=-1)
        current = torch.multinomial(probs, 1, generator=generator)  # [streams, 1]
        out[:, pos] = current[:, 0]
    return out


def split_stories(stream: list[int], stop_ids: set[int]) -> list[list[int]]:
    """The stories of one stream: the non-empty runs between BOS/EOS tokens."""
    stories: list[list[int]] = []
    current: list[int] = []
    for token in stream:
        if token in stop_ids:
            if current:
                stories.append(current)
            current = []
        else:
            current.append(token)
    if current:
        stories.append(current)
    return stories


def story_batches(
    model: FastLlama,
    *,
    seed: int,
    bos_id: int,
    stop_ids: set[int],
    temperature: float = 1.0,
    stream_tokens: int = 256,
    batch_streams: int = 256,
) -> Iterator[list[list[int]]]:
    """Endless batches of stories (token ids without BOS/EOS), one batch of streams at a time.

    Every batch is drawn from one seeded generator in order, so the same arguments give the same
    stories on the same machine (float rounding, hence samples, may differ across CPUs).
    """
    generator = torch.Generator().manual_seed(seed)
    stream_tokens = min(stream_tokens, model.n_ctx)
    while True:
        streams = sample_streams(
            model,
            n_streams=batch_streams,
            stream_tokens=stream_tokens,
            bos_id=bos_id,
            generator=generator,
            temperature=temperature,
        )
        yield [story for row in streams.tolist() for story in split_stories(row, stop_ids)]

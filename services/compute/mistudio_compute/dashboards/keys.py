"""Integer keys that make every selection exact, deterministic and mergeable.

A token position is global: ``row * T + t`` (< 2**32). Ranking by (value desc, position asc) is
one int64 comparison on ``value_bits << 32 | (2**32 - 1 - position)`` because the bit pattern of a
non-negative float32 orders like the float. Uniform sampling is bottom-k on
``priority << 32 | position`` where the priority is a hash of (feature, position), so a sample
does not depend on batch order or on how the pass was split. All hash arithmetic stays below
2**63, so it is the same on every device and in numpy.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_POSITIONS = 1 << 32
"""Global positions must fit in 32 bits (4.29e9 tokens per pass)."""
M32 = 0xFFFFFFFF
EMPTY_TOP = -1
"""Fill for an unused top-example slot (every real key is > 0)."""
EMPTY_SAMPLE = (1 << 63) - 1
"""Fill for an unused sample slot (every real key is smaller)."""
MIX = 0x45D9F3B
SEED_SAMPLE = 0x2545F491
_SEED_WINDOW_A = 0x1B873593
_SEED_WINDOW_B = 0x6A09E667


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Mueller) on int64 tensors holding values in [0, 2**32)."""
    if x.device.type == "cpu":
        # the same bits in place on uint32 (whose products wrap like the & M32): several
        # times less CPU than torch's int64 ops, each of which allocates and spreads threads
        h = x.numpy().astype(np.uint32)
        for _ in range(2):
            h ^= h >> 16
            h *= np.uint32(MIX)
        h ^= h >> 16
        return torch.from_numpy(h.astype(np.int64))
    x = (((x >> 16) ^ x) * MIX) & M32
    x = (((x >> 16) ^ x) * MIX) & M32
    return (x >> 16) ^ x


def top_key(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rank key for positive float32 values at global positions: larger is better."""
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    return (bits << 32) | (M32 - positions)


def top_value(keys: torch.Tensor) -> torch.Tensor:
    """float32 values of top keys (0 for empty slots)."""
    bits = (keys.clamp(min=0) >> 32).to(torch.int32)
    return bits.view(torch.float32)


def top_position(keys: torch.Tensor) -> torch.Tensor:
    """Global positions of top keys (-1 for empty slots)."""
    return torch.where(keys >= 0, M32 - (keys & M32), -1)


def sample_key(
    features: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Bottom-k key: a hash priority of (SAE feature index, global position), then position.
    With ``rows`` [A], the keys of features[rows] at positions [A] (each feature hashed once)."""
    h = mix32(features ^ SEED_SAMPLE)
    if rows is not None:
        h = h.index_select(0, rows)
    h = mix32(h ^ (positions & M32))
    h = mix32(h ^ (positions >> 32))
    return ((h >> 1) << 32) | positions


def sample_position(keys: torch.Tensor) -> torch.Tensor:
    """Global positions of sample keys (-1 for empty slots)."""
    return torch.where(keys != EMPTY_SAMPLE, keys & M32, -1)


def window_hash(tokens: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """63-bit hash of every position's context window [B, T] (ids outside the row count as -1).

    Equal windows (same tokens, max token at the same index) hash equally; two lanes of summed
    position-salted 32-bit hashes make a collision between different windows ~2**-63 likely.
    """
    w = left + right + 1
    padded = torch.nn.functional.pad(tokens + 1, (left, right), value=0)  # [B, T + L + R]
    ids = padded.unfold(1, w, 1)  # [B, T, W]
    lanes = [mix32(mix32(ids ^ salt).sum(-1) & M32) for salt in window_salts(w, tokens.device)]
    return ((lanes[0] >> 1) << 32) | lanes[1]  # [B, T]


def window_salts(width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The two lanes' salts [width] of a window's offsets (``window_hash``)."""
    offsets = torch.arange(width, device=device)
    return mix32(offsets ^ _SEED_WINDOW_A), mix32(offsets ^ _SEED_WINDOW_B)


def segment_top(
    seg: torch.Tensor, keys: torch.Tensor, n_seg: int, k: int, *, largest: bool, fill: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment top-k of a flat list: seg [M] in [0, n_seg), keys [M] unique per segment.

    Returns keys [n_seg, k] (padded with ``fill``) and list indices [n_seg, k] (-1 for padding),
    each row sorted best first.
    """
    order = keys.argsort(descending=largest, stable=True)
    narrow = torch.int32 if n_seg <= 2**31 else torch.int64  # narrow keys sort faster
    by_seg = seg.index_select(0, order).to(narrow).argsort(stable=True)
    order = order.index_select(0, by_seg)  # grouped by segment, best first inside
    seg_sorted = seg.index_select(0, order)
    counts = torch.bincount(seg, minlength=n_seg)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(order), device=keys.device) - starts.index_select(0, seg_sorted)
    keep = (rank < k).nonzero().squeeze(1)
    slot = seg_sorted.index_select(0, keep) * k + rank.index_select(0, keep)  # in [n_seg * k]
    kept = order.index_select(0, keep)
    out_keys = torch.full((n_seg * k,), fill, dtype=torch.int64, device=keys.device)
    out_idx = torch.full((n_seg * k,), -1, dtype=torch.int64, device=keys.device)
    out_keys.index_copy_(0, slot, keys.index_select(0, kept))
    out_idx.index_copy_(0, slot, kept)
    return out_keys.view(n_seg, k), out_idx.view(n_seg, k)


def drop_duplicate_windows(keys: torch.Tensor, hashes: torch.Tensor) -> torch.Tensor:
    """keys [F, M] (larger is better, unique per row or EMPTY_TOP), in place of each key whose
    window hash a better key of its row shares: EMPTY_TOP. Columns keep their order."""
    order = keys.argsort(dim=1, descending=True)
    sorted_hashes, by_hash = hashes.gather(1, order).sort(dim=1, stable=True)  # best first
    dup_sorted = torch.zeros_like(sorted_hashes, dtype=torch.bool)
    dup_sorted[:, 1:] = sorted_hashes[:, 1:] == sorted_hashes[:, :-1]
    dup = torch.zeros_like(dup_sorted).scatter_(1, order.gather(1, by_hash), dup_sorted)
    return keys.masked_fill(dup, EMPTY_TOP)

"""Logit lens: each feature's decoder direction through the unembedding, in feature chunks.

Only [chunk, d_vocab] logits exist at a time (chunk = max_elements // d_vocab, at most
``LENS_ROWS``), so a 131k-feature SAE over a 256k vocabulary never materialises its full logit
matrix. Every chunk is padded to the same number of rows: BLAS picks its kernel (and so its
rounding) by shape, and a feature's logits must not depend on which features share its chunk,
or a sharded computation would differ from an unsharded one in the last bit. Top and bottom
tokens are exact with ties broken by the lower token id (an int64 key per logit); the histogram has
``bins`` equal-width bins over [min, max] of the whole vocabulary row (numpy's convention of
widening an empty range by ±0.5), counts for the reported float32 edges, summing to d_vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mistudio_compute.dashboards.inputs import LogitLensSource

M32 = 0xFFFFFFFF
LENS_ROWS = 256
"""Most feature directions in one matmul (one finalisation chunk's worth)."""


@dataclass(slots=True)
class LogitLens:
    pos_ids: torch.Tensor  # [C, k] highest logits first
    pos_values: torch.Tensor
    neg_ids: torch.Tensor  # [C, k] lowest logits first
    neg_values: torch.Tensor
    hist_edges: torch.Tensor  # [C, bins + 1] float32
    hist_counts: torch.Tensor  # [C, bins] int64
    nonzero: torch.Tensor  # [C] int64 logits != 0


def logit_lens(
    src: LogitLensSource, features: torch.Tensor, k: int, bins: int, max_elements: int = 1 << 24
) -> LogitLens:
    w_u = src.unembedding  # [d_model, V]
    k = min(k, w_u.shape[1])
    step = max(1, min(LENS_ROWS, max_elements // w_u.shape[1]))
    parts = [
        _chunk(src, w_u, features[i : i + step], step, k, bins)
        for i in range(0, len(features), step)
    ]
    return LogitLens(*(torch.cat([p[i] for p in parts]) for i in range(7)))


def _chunk(
    src: LogitLensSource, w_u: torch.Tensor, features: torch.Tensor, rows: int, k: int, bins: int
) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        dirs = src.directions(features.to(w_u.device)).to(w_u.dtype)  # [C, d_model]
        padded = dirs.new_zeros((rows, dirs.shape[1]))
        padded[: len(dirs)] = dirs  # [rows, d_model]: one shape for every chunk
        logits = (padded @ w_u)[: len(dirs)].float() + 0.0  # [C, V]; + 0.0 turns -0.0 into 0.0
    ids = torch.arange(logits.shape[1], device=logits.device)
    order = _ordered_bits(logits) * (1 << 32)  # [C, V] int64, orders like the float
    _, pos_idx = (order + (M32 - ids)).topk(k, dim=1)  # larger value, then lower id
    _, neg_idx = (order + ids).topk(k, dim=1, largest=False)  # smaller value, then lower id
    edges, counts = _histogram(logits, bins)
    return (
        pos_idx.cpu(),
        logits.gather(1, pos_idx).cpu(),
        neg_idx.cpu(),
        logits.gather(1, neg_idx).cpu(),
        edges.cpu(),
        counts.cpu(),
        (logits != 0).sum(1).cpu(),
    )


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """int64 whose order is the float32 order (for -0.0-free, NaN-free input)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def _histogram(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: float32 edges [C, bins + 1] and counts [C, bins] (last bin closed)."""
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)  # [C, 1]
    flat = lo == hi
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
    t = torch.arange(bins + 1, device=x.device, dtype=torch.float32) / bins  # [bins + 1]
    edges = lo + (hi - lo) * t
    edges[:, 0], edges[:, -1] = lo[:, 0], hi[:, 0]
    edges = torch.cummax(edges, dim=1).values  # rounding must never make edges decrease
    b = torch.searchsorted(edges[:, 1:-1].contiguous(), x.contiguous(), right=True)  # [C, V]
    counts = torch.zeros((x.shape[0], bins), dtype=torch.int64, device=x.device)
    return edges, counts.scatter_add_(1, b, torch.ones_like(b))

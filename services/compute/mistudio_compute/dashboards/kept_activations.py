"""Hook activations kept from one feature shard's pass for the next, so that later shards skip
the model forward (``memory.plan_within_budget`` keeps them only when they fit the budget).

A later shard reads back the very tensors the first shard's forward returned, so its state is
the one a fresh forward at the same batches would give. A batch whose rows were kept under other
boundaries (the batch size halved after out-of-memory) runs the forward again, and so does one
whose activations take more memory than the plan counted (a view of a wider tensor, as one
attention head's is, or values wider than float32).
"""

from __future__ import annotations

import numpy as np
import torch

from mistudio_compute.dashboards.inputs import ActivationReader

BYTES_PER_VALUE = 4
"""What the memory plan counts per kept activation (float32)."""


class KeptActivations:
    """Every row's hook activations, held in memory by batch once a pass has read them."""

    def __init__(self, n_rows: int) -> None:
        self._batches: dict[tuple[int, int], torch.Tensor] = {}
        self._held = np.zeros(n_rows, dtype=bool)  # rows some kept batch covers

    def read(self, reader: ActivationReader, tokens: torch.Tensor, rows: range) -> torch.Tensor:
        """The hook activations [B, T, d_in] of ``tokens`` [B, T], rows ``rows``: kept ones when
        this batch was kept, else the model forward's, kept when no row of it is held (each
        row is held once, so the memory stays that of one copy of every row)."""
        kept = self._batches.get((rows.start, rows.stop))
        if kept is not None:
            return kept
        x = reader.activations(tokens)
        if _compact(x) and not self._held[rows.start : rows.stop].any():
            self._batches[rows.start, rows.stop] = x
            self._held[rows.start : rows.stop] = True
        return x

    def clear(self) -> None:
        self._batches.clear()
        self._held[:] = False


def _compact(x: torch.Tensor) -> bool:
    """Whether ``x`` takes the bytes the plan counts: its own storage, no wider than float32."""
    size = x.numel() * x.element_size()
    return x.element_size() <= BYTES_PER_VALUE and x.untyped_storage().nbytes() == size

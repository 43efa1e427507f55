"""A sparse, mergeable table of per-(feature, token id) activation totals.

Used when ``DashboardParams.aggregate_all_tokens`` asks for token tables over every activating
token of the pass instead of the shown examples. Its size is the number of distinct
(feature, token) pairs seen, at most F x vocab, not the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mistudio_compute.dashboards import exact_sum

_COMPACT_MIN = 1 << 20


@dataclass(slots=True)
class TokenTotals:
    """keys = local feature << 32 | token id, sorted and unique after ``compact``."""

    keys: torch.Tensor
    total: torch.Tensor  # [K, VALUE_LIMBS] int64 exact sums (exact_sum)
    count: torch.Tensor  # int64
    vmax: torch.Tensor  # float32
    _pending: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    _pending_len: int = 0

    @classmethod
    def empty(cls, device: torch.device | str) -> TokenTotals:
        z = torch.zeros(0, dtype=torch.int64, device=device)
        total = torch.zeros((0, exact_sum.VALUE_LIMBS), dtype=torch.int64, device=device)
        return cls(z, total, z.clone(), z.float())

    def add(self, features: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor) -> None:
        """Fold active (local feature, token id, value) triples [A] into the table."""
        keys = (features << 32) | tokens
        uniq, inv = torch.unique(keys, return_inverse=True)
        total = keys.new_zeros((len(uniq), exact_sum.VALUE_LIMBS))
        exact_sum.add_values(total, inv, values)
        count = torch.bincount(inv, minlength=len(uniq))
        vmax = values.new_zeros(len(uniq)).scatter_reduce_(0, inv, values, "amax")
        self._append(uniq, total, count, vmax)

    def merge(self, other: TokenTotals) -> TokenTotals:
        out = TokenTotals(self.keys, self.total, self.count, self.vmax, list(self._pending))
        out._pending_len = self._pending_len
        out._append(other.keys, other.total, other.count, other.vmax)
        for part in other._pending:
            out._append(*part)
        out.compact()
        return out

    def compact(self) -> None:
        """Fold pending batches into the sorted table."""
        if not self._pending:
            return
        parts = [(self.keys, self.total, self.count, self.vmax), *self._pending]
        cols = [torch.cat([p[i] for p in parts]) for i in range(4)]
        self.keys, self.total, self.count, self.vmax = _reduce(*cols)
        self._pending, self._pending_len = [], 0

    def rows(self, feature: int) -> tuple[torch.Tensor, ...]:
        """(token ids, float64 totals, counts, maxima) of one local feature; call ``compact``
        first."""
        bounds = torch.tensor([feature << 32, (feature + 1) << 32], device=self.keys.device)
        lo, hi = torch.searchsorted(self.keys, bounds).tolist()
        k = slice(lo, hi)
        return (
            self.keys[k] & 0xFFFFFFFF,
            exact_sum.value_of(self.total[k]),
            self.count[k],
            self.vmax[k],
        )

    def _append(self, *cols: torch.Tensor) -> None:
        self._pending.append(cols)
        self._pending_len += len(cols[0])
        if self._pending_len > max(len(self.keys), _COMPACT_MIN):
            self.compact()


def _reduce(
    keys: torch.Tensor, total: torch.Tensor, count: torch.Tensor, vmax: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum/sum/max the rows sharing a key; returns sorted unique keys."""
    uniq, inv = torch.unique(keys, return_inverse=True)
    out_total = torch.zeros((len(uniq), total.shape[1]), dtype=torch.int64, device=keys.device)
    out_count = torch.zeros(len(uniq), dtype=torch.int64, device=keys.device)
    out_max = torch.zeros(len(uniq), dtype=torch.float32, device=keys.device)
    out_total.index_add_(0, inv, total)
    out_count.index_add_(0, inv, count)
    out_max.scatter_reduce_(0, inv, vmax, "amax")
    return uniq, out_total, out_count, out_max

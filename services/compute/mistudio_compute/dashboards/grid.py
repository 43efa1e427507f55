"""The fine log-spaced grid behind every activation histogram, quantile and quantile bin.

Each feature keeps counts of its positive activations in ``per_decade`` buckets per decade over
[10**lo_exp, 10**hi_exp), plus an underflow and an overflow bucket; the exact min and max are
kept beside it. Bucket ``i`` holds values in [E[i-1], E[i]) where E are the float32 grid edges,
bucket 0 is below E[0] and bucket G+1 is at or above E[G]. Counts add, so the state merges.

Everything shown is derived with edges taken from this grid (or the exact min/max), so reported
counts are exact for the reported edges. Quantiles are read from the bucket holding the order
statistic: the estimate is the geometric midpoint of the bucket clipped to [min, max], so its
relative error is at most ``sqrt(upper / lower) - 1`` of that clipped bucket — 0.904 % for the
default 128 buckets per decade, larger only when the quantile falls in the under/overflow bucket
(values outside [1e-5, 1e5)); the bound actually met is reported per feature.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from mistudio_common.dashboard import BinScale


@dataclass(frozen=True, slots=True)
class FineGrid:
    lo_exp: int = -5
    hi_exp: int = 5
    per_decade: int = 128

    @property
    def n_buckets(self) -> int:
        """G grid buckets plus underflow and overflow."""
        return (self.hi_exp - self.lo_exp) * self.per_decade + 2

    @property
    def relative_error(self) -> float:
        """Quantile error bound for values inside the grid range (float32 edges included)."""
        e = self.edges().double()
        return float((e[1:] / e[:-1]).max().sqrt()) - 1

    def edges(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 edges E [G + 1], strictly increasing."""
        return _edges(self.lo_exp, self.hi_exp, self.per_decade).to(device)

    def bucket(self, values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Bucket index in [0, G + 1] of each positive float32 value."""
        return torch.bucketize(values, edges, right=True)


@functools.cache
def _edges(lo_exp: int, hi_exp: int, per_decade: int) -> torch.Tensor:
    n = (hi_exp - lo_exp) * per_decade
    exps = lo_exp + torch.arange(n + 1, dtype=torch.float64) / per_decade
    return (10.0**exps).to(torch.float32)


def _bucket_bounds(
    edges: torch.Tensor, bucket: torch.Tensor, vmin: torch.Tensor, vmax: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 [lower, upper] of buckets [C, Q] clipped to each feature's [vmin, vmax] [C]."""
    e = edges.to(torch.float64)
    lower_e = torch.cat([e.new_zeros(1), e])  # bucket i starts at E[i-1]
    upper_e = torch.cat([e, e.new_full((1,), math.inf)])  # and ends at E[i]
    lo = torch.maximum(lower_e[bucket], vmin[:, None].double())
    hi = torch.minimum(upper_e[bucket], vmax[:, None].double())
    return lo, hi


def quantiles(
    grid: FineGrid,
    cum: torch.Tensor,
    vmin: torch.Tensor,
    vmax: torch.Tensor,
    levels: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantile estimates [C, Q] (numpy 'linear' definition) and relative error bounds [C].

    cum [C, n_buckets] the histogram's cumulative counts (``hist.cumsum(1)``, taken once for
    this and ``binned``); vmin/vmax [C] exact positive min and max. Rows without any count give
    zeros.
    """
    edges = grid.edges(cum.device)
    n = cum[:, -1:]  # [C, 1]
    h = (n - 1).clamp(min=0).double() * torch.tensor(levels, dtype=torch.float64, device=n.device)
    lo, hi = h.floor(), h.ceil()
    frac = h - lo
    b_lo = torch.searchsorted(cum, lo.long(), right=True).clamp(max=grid.n_buckets - 1)
    b_hi = torch.searchsorted(cum, hi.long(), right=True).clamp(max=grid.n_buckets - 1)
    a_lo, z_lo = _bucket_bounds(edges, b_lo, vmin, vmax)
    a_hi, z_hi = _bucket_bounds(edges, b_hi, vmin, vmax)
    m_lo, m_hi = (a_lo * z_lo).sqrt(), (a_hi * z_hi).sqrt()
    est = m_lo + frac * (m_hi - m_lo)
    err = torch.maximum((z_lo / a_lo).sqrt() - 1, (z_hi / a_hi).sqrt() - 1).amax(1)
    alive = n[:, 0] > 0
    return torch.where(alive[:, None], est, 0.0), torch.where(alive, err, 0.0)


def snap_to_grid(
    grid: FineGrid, ideal: torch.Tensor, vmin: torch.Tensor, vmax: torch.Tensor
) -> torch.Tensor:
    """Grid edge indices [C, m] nearest (in log) to ideal inner edges [C, m], kept in (vmin, vmax).

    An index of -1 means the feature has no grid edge strictly inside (vmin, vmax).
    """
    edges = grid.edges(ideal.device)
    j = ((ideal.double().clamp(min=1e-300).log10() - grid.lo_exp) * grid.per_decade).round()
    j_lo = torch.bucketize(vmin, edges, right=True)  # first edge > vmin
    j_hi = torch.bucketize(vmax, edges, right=False) - 1  # last edge < vmax
    j = torch.minimum(torch.maximum(j.long(), j_lo[:, None]), j_hi[:, None])
    return torch.where((j_lo <= j_hi)[:, None], j, -1)


def ideal_edges(vmin: torch.Tensor, vmax: torch.Tensor, bins: int, scale: BinScale) -> torch.Tensor:
    """Inner edges [C, bins - 1] of an evenly spaced (log or linear) histogram over [vmin, vmax]."""
    t = torch.arange(1, bins, dtype=torch.float64, device=vmin.device) / bins  # [m]
    lo, hi = vmin.double()[:, None], vmax.double()[:, None]
    if scale is BinScale.LOG:
        return lo * (hi / lo) ** t
    return lo + (hi - lo) * t


def binned(
    grid: FineGrid,
    cum: torch.Tensor,
    vmin: torch.Tensor,
    vmax: torch.Tensor,
    inner: torch.Tensor,
) -> list[tuple[list[float], list[int]]]:
    """(edges, counts) per feature for snapped inner edge indices [C, m] from ``snap_to_grid``,
    from the cumulative counts (``quantiles``): cum[:, j] values lie below E[j].

    Edges are [vmin, distinct grid edges..., vmax]; bins are [a, b) except the last, [a, vmax].
    A feature with no counts gets empty lists.
    """
    n_feat, m = inner.shape
    ordered = inner.sort(dim=1).values
    below = cum.gather(1, ordered.clamp(min=0)).cpu().numpy()  # [C, m]
    j = ordered.cpu().numpy()
    kept = np.ones((n_feat, m + 2), dtype=bool)  # vmin, each distinct inner edge, vmax
    kept[:, 1:-1] = j >= 0
    kept[:, 2:-1] &= j[:, 1:] != j[:, :-1]
    total = cum[:, -1].cpu().numpy()
    kept[total == 0] = False  # no counts: empty lists
    edges = np.empty((n_feat, m + 2), dtype=np.float64)
    edges[:, 0], edges[:, -1] = vmin.cpu().numpy(), vmax.cpu().numpy()
    edges[:, 1:-1] = grid.edges().numpy()[np.maximum(j, 0)]
    cuts = np.concatenate([np.zeros((n_feat, 1), np.int64), below, total[:, None]], 1)
    flat_cuts = cuts[kept]
    ends = np.cumsum(kept.sum(1)).tolist()  # [C] end of each feature's edges
    flat_edges, counts = edges[kept].tolist(), np.diff(flat_cuts).tolist()
    # a feature's counts are the differences inside its own cuts: the last edge has none
    return [
        (flat_edges[a:b], counts[a : b - 1]) if b > a else ([], [])
        for a, b in itertools.pairwise([0, *ends])
    ]

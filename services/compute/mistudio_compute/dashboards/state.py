"""Per-feature state of the streaming pass: one dataclass, one per-batch update, one merge.

Memory is O(F x (n_top + n_sample + grid buckets)) whatever the number of tokens. A position is
*active* for a feature when its activation is > 0 and its token is not special (BOS/EOS/PAD):
special positions count nowhere (not in ``token_count``, moments, histograms, examples), and
negative activations count as not firing.

Top examples are the best (value desc, position asc) *peaks*: positions whose value is the
largest of their row within ±(context_left + context_right) — so no two examples' windows
overlap — with at most one example per distinct context window (by a 63-bit window hash).
Both rules are local to a row and a window, so streaming top-k stays exact and mergeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from mistudio_common.errors import InvalidArgument

from mistudio_compute.dashboards import keys as K
from mistudio_compute.dashboards.grid import FineGrid
from mistudio_compute.dashboards.token_totals import TokenTotals


@dataclass(frozen=True, slots=True)
class StateConfig:
    n_top: int
    n_sample: int
    context_left: int
    context_right: int
    special_ids: tuple[int, ...]
    grid: FineGrid = field(default_factory=FineGrid)
    track_tokens: bool = False

    @property
    def window(self) -> int:
        """Two peaks closer than this share a context window."""
        return self.context_left + self.context_right


@dataclass(slots=True)
class PassState:
    config: StateConfig
    features: torch.Tensor  # [F] SAE feature indices
    seq_len: int
    token_count: int  # non-special positions seen
    count: torch.Tensor  # [F] int64 active positions
    total: torch.Tensor  # [F] float64 sum of active values
    total_sq: torch.Tensor  # [F] float64 sum of squares
    vmin: torch.Tensor  # [F] float32 smallest active value (inf if none)
    vmax: torch.Tensor  # [F] float32 largest active value (0 if none)
    hist: torch.Tensor  # [F, n_buckets] int64 fine-grid counts
    top_keys: torch.Tensor  # [F, n_top] int64 best first (keys.top_key), EMPTY_TOP padded
    top_hash: torch.Tensor  # [F, n_top] int64 window hashes
    sample_keys: torch.Tensor  # [F, n_sample] int64 smallest first (keys.sample_key)
    sample_values: torch.Tensor  # [F, n_sample] float32
    sample_hash: torch.Tensor  # [F, n_sample] int64
    tokens: TokenTotals | None

    @classmethod
    def empty(
        cls, config: StateConfig, features: torch.Tensor, seq_len: int, device: torch.device
    ) -> PassState:
        n = len(features)

        def full(shape: tuple[int, ...], value: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.full(shape, value, dtype=dtype, device=device)

        return cls(
            config=config,
            features=features.to(device=device, dtype=torch.int64),
            seq_len=seq_len,
            token_count=0,
            count=full((n,), 0, torch.int64),
            total=full((n,), 0, torch.float64),
            total_sq=full((n,), 0, torch.float64),
            vmin=full((n,), float("inf"), torch.float32),
            vmax=full((n,), 0, torch.float32),
            hist=full((n, config.grid.n_buckets), 0, torch.int64),
            top_keys=full((n, config.n_top), K.EMPTY_TOP, torch.int64),
            top_hash=full((n, config.n_top), 0, torch.int64),
            sample_keys=full((n, config.n_sample), K.EMPTY_SAMPLE, torch.int64),
            sample_values=full((n, config.n_sample), 0, torch.float32),
            sample_hash=full((n, config.n_sample), 0, torch.int64),
            tokens=TokenTotals.empty(device) if config.track_tokens else None,
        )

    def update(self, acts: torch.Tensor, tokens: torch.Tensor, first_row: int) -> None:
        """Fold one batch in: acts [B*T, F] of this state's features, tokens [B, T] = rows
        ``first_row ...``. All allocation happens before the state changes, so an
        out-of-memory error leaves it as it was."""
        cfg, n_feat, (b, t) = self.config, acts.shape[1], tokens.shape
        special = torch.isin(tokens, torch.tensor(cfg.special_ids, device=tokens.device))
        flat = acts.reshape(-1).nonzero().squeeze(1)  # [A'] non-zero (position, feature)
        n, f, val = flat // n_feat, flat % n_feat, acts.reshape(-1)[flat].float()
        sel = _where((val > 0) & ~special.view(-1)[n])  # active: positive, not special
        sel = sel[(f[sel] * (b * t) + n[sel]).argsort()]  # by feature, then position
        f, n, val = f[sel], n[sel], val[sel]  # [A]
        pos = first_row * t + n  # [A] global positions
        win = K.window_hash(tokens, cfg.context_left, cfg.context_right).view(-1)  # [N]
        _, win_id = torch.unique(win, return_inverse=True)  # [N] equal ids = equal windows
        p = _where(_is_peak(f, n, val, t, cfg.window))  # [P] peaks
        group = f[p] * (b * t) + win_id[n[p]]  # distinct (feature, window) pairs

        top = self._fold_top(f[p], K.top_key(val[p], pos[p]), win[n[p]], group)
        sample = self._fold_sample(f, K.sample_key(self.features[f], pos), val, win[n])
        bucket = f * cfg.grid.n_buckets + cfg.grid.bucket(val, cfg.grid.edges(val.device))

        # commit: from here on only in-place writes into already-allocated tensors
        rows, keys, hashes = top
        self.top_keys[rows], self.top_hash[rows] = keys, hashes
        rows, keys, values, hashes = sample
        self.sample_keys[rows], self.sample_values[rows] = keys, values
        self.sample_hash[rows] = hashes
        self.hist.view(-1).index_add_(0, bucket, torch.ones_like(bucket))
        self.count += torch.bincount(f, minlength=n_feat)
        self.total.index_add_(0, f, val.double())
        self.total_sq.index_add_(0, f, val.double().square())
        self.vmin.scatter_reduce_(0, f, val, "amin")
        self.vmax.scatter_reduce_(0, f, val, "amax")
        self.token_count += int((~special).sum())
        if self.tokens is not None:
            self.tokens.add(f, tokens.reshape(-1)[n], val)

    def _fold_top(
        self, f: torch.Tensor, key: torch.Tensor, win: torch.Tensor, group: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New top rows for the features this batch's peaks change: (rows [R], keys and window
        hashes [R, n_top]). Keeps the best peak of each ``group`` (= feature and window)."""
        i = _where(key > self.top_keys[:, -1][f])  # could beat the current n_top-th best
        f, key, win, group = f[i], key[i], win[i], group[i]
        _, group = torch.unique(group, return_inverse=True)
        best = torch.full_like(key, K.EMPTY_TOP).scatter_reduce_(0, group, key, "amax")
        i = _where(key == best[group])
        rows, seg = torch.unique(f[i], return_inverse=True)
        keys, idx = K.segment_top(seg, key[i], len(rows), self.config.n_top, largest=True,
                                  fill=K.EMPTY_TOP)  # fmt: skip
        old = (self.top_keys[rows], self.top_hash[rows])
        return rows, *_merge_top(old, (keys, _gather(win[i], idx, 0)), self.config.n_top)

    def _fold_sample(
        self, f: torch.Tensor, key: torch.Tensor, val: torch.Tensor, win: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """New sample rows for the features this batch changes: (rows [R], keys, values and
        window hashes [R, n_sample])."""
        i = _where(key < self.sample_keys[:, -1][f])  # could enter the current sample
        rows, seg = torch.unique(f[i], return_inverse=True)
        keys, idx = K.segment_top(seg, key[i], len(rows), self.config.n_sample, largest=False,
                                  fill=K.EMPTY_SAMPLE)  # fmt: skip
        new = (keys, _gather(val[i], idx, 0.0), _gather(win[i], idx, 0))
        old = (self.sample_keys[rows], self.sample_values[rows], self.sample_hash[rows])
        return rows, *_merge_sample(old, new, self.config.n_sample)

    def merge(self, other: PassState) -> PassState:
        """The state of a pass over both parts' rows (rows must not overlap)."""
        _check_compatible(self, other)
        top = _merge_top((self.top_keys, self.top_hash), (other.top_keys, other.top_hash),
                         self.config.n_top)  # fmt: skip
        sample = _merge_sample(
            (self.sample_keys, self.sample_values, self.sample_hash),
            (other.sample_keys, other.sample_values, other.sample_hash),
            self.config.n_sample,
        )
        tokens = None
        if self.tokens is not None and other.tokens is not None:
            tokens = self.tokens.merge(other.tokens)
        return replace(
            self,
            token_count=self.token_count + other.token_count,
            count=self.count + other.count,
            total=self.total + other.total,
            total_sq=self.total_sq + other.total_sq,
            vmin=torch.minimum(self.vmin, other.vmin),
            vmax=torch.maximum(self.vmax, other.vmax),
            hist=self.hist + other.hist,
            top_keys=top[0],
            top_hash=top[1],
            sample_keys=sample[0],
            sample_values=sample[1],
            sample_hash=sample[2],
            tokens=tokens,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state, by field name (token totals compacted and flattened)."""
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        if self.tokens is not None:
            self.tokens.compact()
            for name in ("keys", "total", "count", "vmax"):
                out[f"tokens.{name}"] = getattr(self.tokens, name)
        return out

    @classmethod
    def from_tensors(
        cls, config: StateConfig, seq_len: int, token_count: int, tensors: dict[str, Any]
    ) -> PassState:
        tok = None
        if config.track_tokens:
            tok = TokenTotals(*(tensors[f"tokens.{n}"] for n in ("keys", "total", "count", "vmax")))
        plain = {k: v for k, v in tensors.items() if not k.startswith("tokens.")}
        return cls(config=config, seq_len=seq_len, token_count=token_count, tokens=tok, **plain)


def _where(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D mask."""
    return mask.nonzero().squeeze(1)


def _gather(x: torch.Tensor, idx: torch.Tensor, fill: float) -> torch.Tensor:
    """x[idx] where idx >= 0, else ``fill`` (x may be empty)."""
    if x.numel() == 0:
        return torch.full(idx.shape, fill, dtype=x.dtype, device=x.device)
    return torch.where(idx >= 0, x[idx.clamp(min=0)], fill)


def _is_peak(f: torch.Tensor, n: torch.Tensor, val: torch.Tensor, t: int, w: int) -> torch.Tensor:
    """For active entries [A] sorted by (feature, position): is each its row's maximum within
    ±w positions (earliest wins ties)? Inactive neighbours are 0 and never win, and active ones
    within ±w positions are within w places in the list, so w shifted comparisons suffice."""
    peak = torch.ones_like(val, dtype=torch.bool)
    row = n // t
    for d in range(1, min(w, len(val) - 1) + 1):
        i, j = slice(0, -d), slice(d, None)  # entry i and the entry d places later
        close = (f[i] == f[j]) & (row[i] == row[j]) & (n[j] - n[i] <= w)
        peak[:-d] &= ~(close & (val[j] > val[i]))
        peak[d:] &= ~(close & (val[i] >= val[j]))
    return peak


def _merge_top(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    keys, hashes = K.drop_duplicate_windows(torch.cat([a[0], b[0]], 1), torch.cat([a[1], b[1]], 1))
    keys, idx = keys.topk(k, dim=1)
    return keys, hashes.gather(1, idx).masked_fill_(keys == K.EMPTY_TOP, 0)


def _merge_sample(
    a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keys, values, hashes = (torch.cat([x, y], 1) for x, y in zip(a, b, strict=True))
    keys, idx = keys.topk(k, dim=1, largest=False)
    empty = keys == K.EMPTY_SAMPLE
    return (
        keys,
        values.gather(1, idx).masked_fill_(empty, 0),
        hashes.gather(1, idx).masked_fill_(empty, 0),
    )


def _check_compatible(a: PassState, b: PassState) -> None:
    if a.config != b.config or a.seq_len != b.seq_len or not torch.equal(a.features, b.features):
        raise InvalidArgument(
            "cannot merge pass states computed with different features or parameters",
            field="state",
            fix="merge only states of one job (same features, params and row length)",
        )

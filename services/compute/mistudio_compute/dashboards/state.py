"""Per-feature state of the streaming pass: one dataclass, one per-batch update, one merge.

Memory is O(F x (n_top + n_sample + grid buckets)) whatever the number of tokens. A position is
*active* for a feature when its activation is > 0 and its token is not special (BOS/EOS/PAD):
special positions count nowhere (not in ``token_count``, moments, histograms, examples), and
negative activations count as not firing.

Sums are exact integers (``exact_sum``), so every field of a merged state equals, bit for bit,
that of one pass over the same rows, however they were split, batched and merged.

Top examples are the best (value desc, position asc) *peaks*: positions whose value is the
largest of their row within ±(context_left + context_right) — so no two examples' windows
overlap — with at most one example per distinct context window (by a 63-bit window hash).
Both rules are local to a row and a window, so streaming top-k stays exact and mergeable.

Every kept top or sample entry carries its context window's values (that feature's activation at
positions -context_left ... +context_right of its row; 0 outside the row, at special tokens and
where not positive), captured from the batch it came from, so examples need no second pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import torch
from mistudio_common.errors import InvalidArgument

from mistudio_compute.dashboards import exact_sum, fold_kernels
from mistudio_compute.dashboards import keys as K
from mistudio_compute.dashboards.fold_kernels import SampleWrites, TopRows
from mistudio_compute.dashboards.grid import FineGrid
from mistudio_compute.dashboards.token_totals import TokenTotals
from mistudio_compute.encode_tile import AffineEncode, EncodeTile


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

    @property
    def width(self) -> int:
        """Positions in one context window."""
        return self.context_left + 1 + self.context_right


@dataclass(slots=True)
class PassState:
    config: StateConfig
    features: torch.Tensor  # [F] SAE feature indices
    seq_len: int
    token_count: int  # non-special positions seen
    count: torch.Tensor  # [F] active positions (count_dtype)
    total: torch.Tensor  # [F, VALUE_LIMBS] int64 exact sum of active values (exact_sum)
    total_sq: torch.Tensor  # [F, SQUARE_LIMBS] int64 exact sum of their squares
    vmin: torch.Tensor  # [F] float32 smallest active value (inf if none)
    vmax: torch.Tensor  # [F] float32 largest active value (0 if none)
    hist: torch.Tensor  # [F, n_buckets] fine-grid counts (count_dtype)
    top_keys: torch.Tensor  # [F, n_top] int64 best first (keys.top_key), EMPTY_TOP padded
    top_hash: torch.Tensor  # [F, n_top] int64 window hashes
    top_windows: torch.Tensor  # [F, n_top, width] float32 window values
    sample_keys: torch.Tensor  # [F, n_sample] int64 keys.sample_key, any order, EMPTY_SAMPLE unused
    sample_threshold: torch.Tensor  # [F] int64 largest of each row (EMPTY_SAMPLE while it has room)
    sample_values: torch.Tensor  # [F, n_sample] float32
    sample_hash: torch.Tensor  # [F, n_sample] int64
    sample_windows: torch.Tensor  # [F, n_sample, width] float32
    tokens: TokenTotals | None

    @classmethod
    def empty(
        cls,
        config: StateConfig,
        features: torch.Tensor,
        seq_len: int,
        device: torch.device,
        positions: int = K.MAX_POSITIONS,
    ) -> PassState:
        """A state for a pass over at most ``positions`` token positions (which sizes counts)."""
        n, counts = len(features), count_dtype(positions)

        def full(shape: tuple[int, ...], value: float, dtype: torch.dtype) -> torch.Tensor:
            return torch.full(shape, value, dtype=dtype, device=device)

        return cls(
            config=config,
            features=features.to(device=device, dtype=torch.int64),
            seq_len=seq_len,
            token_count=0,
            count=full((n,), 0, counts),
            total=full((n, exact_sum.VALUE_LIMBS), 0, torch.int64),
            total_sq=full((n, exact_sum.SQUARE_LIMBS), 0, torch.int64),
            vmin=full((n,), float("inf"), torch.float32),
            vmax=full((n,), 0, torch.float32),
            hist=full((n, config.grid.n_buckets), 0, counts),
            top_keys=full((n, config.n_top), K.EMPTY_TOP, torch.int64),
            top_hash=full((n, config.n_top), 0, torch.int64),
            top_windows=full((n, config.n_top, config.width), 0, torch.float32),
            sample_keys=full((n, config.n_sample), K.EMPTY_SAMPLE, torch.int64),
            sample_threshold=full((n,), K.EMPTY_SAMPLE, torch.int64),
            sample_values=full((n, config.n_sample), 0, torch.float32),
            sample_hash=full((n, config.n_sample), 0, torch.int64),
            sample_windows=full((n, config.n_sample, config.width), 0, torch.float32),
            tokens=TokenTotals.empty(device) if config.track_tokens else None,
        )

    @staticmethod
    def bytes_per_feature(config: StateConfig, positions: int = K.MAX_POSITIONS) -> int:
        """Bytes one feature's arrays take, read from the shapes and dtypes ``empty`` allocates
        (token totals grow with the data and are not included)."""
        plain = replace(config, track_tokens=False)
        meta = PassState.empty(plain, torch.zeros(1), 1, torch.device("meta"), positions)
        return sum(t.element_size() * t.numel() for t in meta.tensors().values())

    def update(self, acts: torch.Tensor, tokens: torch.Tensor, first_row: int) -> None:
        """Fold one batch in: acts [B*T, F] of this state's features, tokens [B, T] = rows
        ``first_row ...``. All allocation happens before the state changes, so an
        out-of-memory error leaves it as it was."""
        batch = self.batch_tokens(tokens)
        fold = self.fold(
            dense_entries(acts, batch.special, self.config.grid), tokens, first_row, batch
        )
        fold.commit()
        self.count_tokens(tokens, [fold])

    def parts(self, ranges: list[tuple[int, int]]) -> list[PassState]:
        """States of the feature ranges [lo, hi) of ``ranges`` whose tensors are views of
        this state's rows: folding and committing a batch's columns into each of them (in any
        order, or at once on several threads) and then ``count_tokens`` here is ``update``.
        The parts keep no token count or token totals of their own."""
        config = replace(self.config, track_tokens=False)
        rows = self.tensors_by_feature()
        return [
            PassState.from_tensors(config, self.seq_len, 0, {k: x[lo:hi] for k, x in rows.items()})
            for lo, hi in ranges
        ]

    def tensors_by_feature(self) -> dict[str, torch.Tensor]:
        """The tensors of the state with one row per feature (all but the token totals)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }

    def batch_tokens(self, tokens: torch.Tensor) -> BatchTokens:
        """What a batch's tokens [B, T] tell every feature alike: read once per batch, whatever
        number of ``parts`` fold it."""
        cfg = self.config
        special = torch.isin(tokens, torch.tensor(cfg.special_ids, device=tokens.device))
        on_cpu = tokens.device.type == "cpu"
        win = win_id = None
        if cfg.n_top or cfg.n_sample:
            hash_windows = fold_kernels.window_hash if on_cpu else K.window_hash
            win = hash_windows(tokens, cfg.context_left, cfg.context_right).view(-1)  # [N]
        if cfg.n_top:
            _, win_id = torch.unique(win, return_inverse=True)  # [N] equal ids = equal windows
        return BatchTokens(special.view(-1), win, win_id)

    def fold(
        self, entries: ActiveEntries, tokens: torch.Tensor, first_row: int, batch: BatchTokens
    ) -> Fold:
        """What folding one batch (as ``update`` takes it, its activations' ``entries``)
        changes, computed without changing the state: everything that allocates per entry
        happens here. ``batch`` is ``batch_tokens(tokens)``."""
        cfg, (b, t) = self.config, tokens.shape
        special, win, win_id = batch
        f, n, val, bucket, n_feat, compiled = entries
        pos = first_row * t + n  # [A] global positions

        def windows(i: torch.Tensor) -> torch.Tensor:  # [X] active entries -> [X, width]
            left, right = cfg.context_left, cfg.context_right
            if compiled:
                return fold_kernels.window_values(f, n, val, t, left, right, i)
            return _window_values(f * (b * t) + n, val, b * t, t, left, right, i)

        top = sample = None  # a state without top or sample slots pays for no examples
        if cfg.n_top:
            assert win is not None and win_id is not None
            # Below its feature's n_top-th best value an entry can neither enter nor stop a
            # larger one being a peak (ties included), so the peak search skips it: after the
            # first batches that is nearly every entry.
            floor = K.top_value(self.top_keys[:, -1])  # [F]
            if compiled:
                p = fold_kernels.top_peaks(f, n, val, floor, t, cfg.window)  # [P] peaks
                kept = self.top_keys, self.top_hash, self.top_windows
                top = fold_kernels.fold_top(
                    f, n, val, p, first_row * t, win, kept, t, cfg.context_left, cfg.context_right
                )
            else:
                c = _where(val >= _at(floor, f))  # [C] candidates
                peak = _is_peak(_at(f, c), _at(n, c), _at(val, c), t, b * t, cfg.window)
                p = _at(c, _where(peak))
                n_p = _at(n, p)
                group = _at(f, p) * (b * t) + _at(win_id, n_p)  # distinct (feature, window)
                key = K.top_key(_at(val, p), _at(pos, p))
                top = self._fold_top(p, key, _at(win, n_p), group, f, windows)
        if cfg.n_sample:
            assert win is not None
            if compiled:
                writes = fold_kernels.sample_writes(
                    self.features, f, pos, self.sample_keys, self.sample_threshold
                )
            else:
                writes = self._sample_writes(f, pos)
            sample = self._fold_sample(writes, val, win, n, windows)
        return Fold(self, n_feat, special, f, n, val, bucket, top, sample, compiled)

    def count_tokens(self, tokens: torch.Tensor, folds: list[Fold]) -> None:
        """The token count and token totals of a batch tokens [B, T] whose features' folds
        (this state's, or its ``parts``' in feature order) are committed."""
        self.token_count += int((~folds[0].special).sum())
        if self.tokens is None:
            return
        first, f = 0, []
        for fold in folds:  # the parts' local features, as this state's
            f.append(fold.f + first)
            first += fold.n_feat
        n, val = torch.cat([x.n for x in folds]), torch.cat([x.val for x in folds])
        self.tokens.add(torch.cat(f), _at(tokens.reshape(-1), n), val)

    def _fold_top(
        self,
        a: torch.Tensor,
        key: torch.Tensor,
        win: torch.Tensor,
        group: torch.Tensor,
        f: torch.Tensor,
        windows: Callable[[torch.Tensor], torch.Tensor],
    ) -> TopRows:
        """New top rows for the features this batch's peaks change (as ``fold_kernels.fold_top``
        on a CPU). ``a`` [P] indexes the peaks among the active entries (features ``f[a]``);
        keeps the best peak of each ``group`` (= feature and window)."""
        k = self.config.n_top
        i = _where(key > _at(self.top_keys[:, -1], _at(f, a)))  # could beat the n_top-th best
        a, key, win, group = _at(a, i), _at(key, i), _at(win, i), _at(group, i)
        _, group = torch.unique(group, return_inverse=True)
        best = torch.full_like(key, K.EMPTY_TOP).scatter_reduce_(0, group, key, "amax")
        i = _where(key == _at(best, group))
        a, key, win = _at(a, i), _at(key, i), _at(win, i)
        rows, seg = torch.unique(_at(f, a), return_inverse=True)
        new, idx = K.segment_top(seg, key, len(rows), k, largest=True, fill=K.EMPTY_TOP)
        old_keys, old_hashes = (x.index_select(0, rows) for x in (self.top_keys, self.top_hash))
        hashes = torch.cat([old_hashes, _gather(win, idx, 0)], 1)  # [R, 2k]
        keys, pick = _merge_top(torch.cat([old_keys, new], 1), hashes, k)
        empty = keys == K.EMPTY_TOP
        old = self.top_windows.index_select(0, rows)  # [R, k, width]
        wins = _fold_windows(old, pick, _gather(a, idx, -1), empty, windows)
        return TopRows(rows, keys, _take(hashes, pick, empty), wins)

    def _sample_writes(self, f: torch.Tensor, pos: torch.Tensor) -> SampleWrites:
        """Which sample slots this batch's active entries (features f, global positions pos
        [A]) enter, evicting the kept entries there: a row's i-th smallest candidate takes the
        slot of its i-th largest kept key (empty slots first, by column) when it is smaller,
        the order in which ``fold_kernels`` evicts. Kept entries never move."""
        k = self.config.n_sample
        key = K.sample_key(self.features, pos, f)
        a = _where(key < _at(self.sample_threshold, f))  # [C] could enter the current sample
        key = _at(key, a)
        rows, seg = torch.unique_consecutive(_at(f, a), return_inverse=True)  # f is sorted
        new, idx = K.segment_top(seg, key, len(rows), k, largest=False, fill=K.EMPTY_SAMPLE)
        old = self.sample_keys.index_select(0, rows)  # [R, k]
        old, col = old.sort(dim=1, descending=True, stable=True)  # largest (or empty) first
        enters = new < old  # [R, k] a prefix of each row: new ascends, old descends
        i = _where(enters.view(-1))  # [X] in the [R, k] lists
        return SampleWrites(
            entered_at=_at((rows[:, None] * k + col).view(-1), i),
            entering=_at(a, _at(idx.view(-1), i)),
            entering_keys=_at(new.view(-1), i),
            rows=rows,
            thresholds=torch.where(enters, new, old).amax(1),
        )

    def _fold_sample(
        self,
        writes: SampleWrites,
        val: torch.Tensor,
        win: torch.Tensor,
        n: torch.Tensor,
        windows: Callable[[torch.Tensor], torch.Tensor],
    ) -> SampleFold:
        """The sample writes of this batch with the entering entries' values, window hashes and
        windows, read from the batch (active entries' values val and batch positions n [A];
        window hashes ``win`` [N]): only entering entries are written."""
        entry = writes.entering
        return SampleFold(writes, _at(val, entry), _at(win, _at(n, entry)), windows(entry))

    def merge(self, other: PassState) -> PassState:
        """The state of a pass over both parts' rows (rows must not overlap)."""
        _check_compatible(self, other)
        cfg = self.config

        def both(name: str) -> torch.Tensor:
            return torch.cat([getattr(self, name), getattr(other, name)], 1)

        top_keys, pick = _merge_top(both("top_keys"), both("top_hash"), cfg.n_top)
        top_empty = top_keys == K.EMPTY_TOP
        sample_keys, s_pick = both("sample_keys").topk(cfg.n_sample, dim=1, largest=False)
        s_empty = sample_keys == K.EMPTY_SAMPLE
        threshold = sample_keys.amax(1) if cfg.n_sample else self.sample_threshold
        counts = count_dtype(self.token_count + other.token_count)
        if counts != self.count.dtype or counts != other.count.dtype:  # widen when they may not fit
            counts = torch.int64
        tokens = None
        if self.tokens is not None and other.tokens is not None:
            tokens = self.tokens.merge(other.tokens)
        return replace(
            self,
            token_count=self.token_count + other.token_count,
            count=self.count.to(counts) + other.count.to(counts),
            total=self.total + other.total,
            total_sq=self.total_sq + other.total_sq,
            vmin=torch.minimum(self.vmin, other.vmin),
            vmax=torch.maximum(self.vmax, other.vmax),
            hist=self.hist.to(counts) + other.hist.to(counts),
            top_keys=top_keys,
            top_hash=_take(both("top_hash"), pick, top_empty),
            top_windows=_take(both("top_windows"), pick, top_empty),
            sample_keys=sample_keys,
            sample_threshold=threshold,
            sample_values=_take(both("sample_values"), s_pick, s_empty),
            sample_hash=_take(both("sample_hash"), s_pick, s_empty),
            sample_windows=_take(both("sample_windows"), s_pick, s_empty),
            tokens=tokens,
        )

    def sample_order(self) -> torch.Tensor:
        """Columns [F, n_sample] of each feature's sample in key (priority) order, empty slots
        last: a fold writes entering entries into evicted ones' slots and keeps no order."""
        return self.sample_keys.argsort(dim=1, stable=True)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state, by field name (token totals compacted and flattened)."""
        out = self.tensors_by_feature()
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


class ActiveEntries(NamedTuple):
    """A batch's active entries (positive, at positions not special) over ``n_feat`` features,
    ordered by (feature, position)."""

    f: torch.Tensor  # [A] features
    n: torch.Tensor  # [A] batch positions
    val: torch.Tensor  # [A] float32 values
    bucket: torch.Tensor  # [A] fine-grid cells (feature * n_buckets + bucket)
    n_feat: int
    compiled: bool  # on the CPU: folded by fold_kernels (else by torch ops)


def dense_entries(acts: torch.Tensor, special: torch.Tensor, grid: FineGrid) -> ActiveEntries:
    """The active entries of a batch's activations acts [N, F] (positions ``special`` [N])."""
    n_feat = acts.shape[1]
    if fold_kernels.applies(acts):
        every = torch.arange(n_feat)
        tile = EncodeTile(slice(0, acts.shape[0]), acts, every, every)
        return ActiveEntries(
            *fold_kernels.active_entries([tile], n_feat, special, grid), n_feat, True
        )
    f, n, val = _active_entries(acts, special)
    bucket = f * grid.n_buckets + grid.bucket(val, grid.edges(val.device))
    return ActiveEntries(f, n, val, bucket, n_feat, False)


def tiled_entries(
    tiles: Iterable[EncodeTile],
    n_feat: int,
    special: torch.Tensor,
    grid: FineGrid,
    scratch: fold_kernels.EntryBuffer | None = None,
) -> ActiveEntries:
    """The active entries of a batch's activations [N, n_feat] on the CPU given tile by tile
    (``fold_kernels.active_entries``, scanned into ``scratch``): the dense activations are
    never needed."""
    entries = fold_kernels.active_entries(tiles, n_feat, special, grid, scratch)
    return ActiveEntries(*entries, n_feat, True)


def affine_entries(
    encode: AffineEncode,
    features: torch.Tensor,
    special: torch.Tensor,
    grid: FineGrid,
    scratch: fold_kernels.EntryBuffer | None = None,
) -> ActiveEntries:
    """The active entries of ``features`` [F] of a batch encoded by ``encode``, which the
    compiled scan computes tile by tile itself (``fold_kernels.affine_entries``)."""
    entries = fold_kernels.affine_entries(encode, features, special, grid, scratch)
    return ActiveEntries(*entries, len(features), True)


class BatchTokens(NamedTuple):
    """A batch's per-position facts that do not depend on the features (``batch_tokens``)."""

    special: torch.Tensor  # [N] positions that count nowhere
    win: torch.Tensor | None  # [N] context-window hashes (when examples are kept)
    win_id: torch.Tensor | None  # [N] equal ids = equal windows (when top examples are kept)


class SampleFold(NamedTuple):
    """A batch's changes to the samples (``PassState._fold_sample``): the slots its entering
    entries take, with what is written there, and the new thresholds of the rows they enter."""

    writes: SampleWrites
    values: torch.Tensor  # [X] entering entries' values
    hashes: torch.Tensor  # [X] their window hashes
    windows: torch.Tensor  # [X, width] their windows


@dataclass(slots=True)
class Fold:
    """One batch's changes to a state (``PassState.fold``), applied by ``commit`` with in-place
    writes into tensors the state already holds."""

    state: PassState
    n_feat: int
    special: torch.Tensor  # [N] positions that count nowhere
    f: torch.Tensor  # [A] active entries' features, by feature and position
    n: torch.Tensor  # [A] their batch positions
    val: torch.Tensor  # [A] their values
    bucket: torch.Tensor  # [A] their fine-grid cells (feature * n_buckets + bucket)
    top: TopRows | None
    sample: SampleFold | None
    compiled: bool  # the statistics are added by fold_kernels (else by torch ops)

    def commit(self) -> None:
        """Writes the batch into the state's per-feature tensors (not its token count)."""
        s, f, val = self.state, self.f, self.val
        if self.top is not None:
            rows, keys, hashes, wins = self.top
            s.top_keys.index_copy_(0, rows, keys)
            s.top_hash.index_copy_(0, rows, hashes)
            s.top_windows.index_copy_(0, rows, wins)
        if self.sample is not None:
            writes, slots = self.sample.writes, self.sample.writes.entered_at
            s.sample_keys.view(-1).index_copy_(0, slots, writes.entering_keys)
            s.sample_threshold.index_copy_(0, writes.rows, writes.thresholds)
            s.sample_values.view(-1).index_copy_(0, slots, self.sample.values)
            s.sample_hash.view(-1).index_copy_(0, slots, self.sample.hashes)
            s.sample_windows.view(-1, s.config.width).index_copy_(0, slots, self.sample.windows)
        if self.compiled:
            stats = s.hist, s.count, s.total, s.total_sq, s.vmin, s.vmax
            fold_kernels.add_statistics(*stats, f, val, self.bucket)
        else:
            self._add_statistics()

    def _add_statistics(self) -> None:
        """The histogram, count, exact moments, min and max of the batch, with torch ops."""
        s, f, val, bucket = self.state, self.f, self.val, self.bucket
        s.hist.view(-1).index_add_(0, bucket, torch.ones_like(bucket, dtype=s.hist.dtype))
        s.count += torch.bincount(f, minlength=self.n_feat)
        exact_sum.add_moments(s.total, s.total_sq, f, val)
        s.vmin.scatter_reduce_(0, f, val, "amin")
        s.vmax.scatter_reduce_(0, f, val, "amax")


def count_dtype(positions: int) -> torch.dtype:
    """int32 for counts of a pass that cannot reach 2**31 positions (half the bytes), else int64."""
    return torch.int32 if positions < 2**31 else torch.int64


def _active_entries(
    acts: torch.Tensor, special: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Active entries of acts [N, F] (positive, at positions not ``special`` [N]) ordered by
    (feature, position): features and positions [A] int64, values [A] float32. One thresholded
    pass over acts; a stable sort of the features of the position-major list orders it."""
    n_feat = acts.shape[1]
    mask = acts > 0
    mask[special] = False
    flat = _where(mask.view(-1))
    val = _at(acts.reshape(-1), flat).float()
    f, order = (flat % n_feat).to(_index_dtype(n_feat)).sort(stable=True)
    return f.long(), _at(flat // n_feat, order), _at(val, order)


def _index_dtype(n: int) -> torch.dtype:
    """The narrowest integer type holding 0 ... n - 1 (narrow keys sort faster)."""
    return torch.int16 if n <= 2**15 else torch.int32


def _where(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D mask."""
    return mask.nonzero().squeeze(1)


def _at(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[idx] of a 1-D x: ``index_select``, which on CPU is several times faster than indexing
    with a tensor (idx may have any shape)."""
    return x.index_select(0, idx.reshape(-1)).view(idx.shape)


def _gather(x: torch.Tensor, idx: torch.Tensor, fill: float) -> torch.Tensor:
    """x[idx] where idx >= 0, else ``fill`` (x may be empty)."""
    if x.numel() == 0:
        return torch.full(idx.shape, fill, dtype=x.dtype, device=x.device)
    return torch.where(idx >= 0, _at(x, idx.clamp(min=0)), fill)


def _is_peak(
    f: torch.Tensor, n: torch.Tensor, val: torch.Tensor, t: int, n_pos: int, w: int
) -> torch.Tensor:
    """For active entries [A] sorted by (feature, position), positions n < n_pos: is each its
    row's maximum within ±w positions (earliest wins ties)? Inactive neighbours are 0 and never
    win. Each entry's neighbours are a contiguous slice of the list (found by binary search),
    whose maximum a sparse table of power-of-two range maxima answers in two lookups."""
    if w == 0 or len(val) < 2:
        return torch.ones_like(val, dtype=torch.bool)
    key = f * n_pos + n  # [A] sorted
    start = n - n % t  # [A] first position of the entry's row
    lo = torch.searchsorted(key, key - torch.minimum(n - start, torch.full_like(n, w)))
    hi = torch.searchsorted(key, key + (start + t - 1 - n).clamp(max=w), right=True) - 1
    i = torch.arange(len(val), device=val.device)
    table = [val]  # table[l][j] = max(val[j : j + 2**l]) (clipped at the end)
    while 2 ** len(table) <= w:
        prev, half = table[-1], 2 ** (len(table) - 1)
        table.append(torch.maximum(prev, _at(prev, (i + half).clamp(max=len(val) - 1))))
    levels = torch.stack(table).view(-1)  # [L * A]
    log2 = torch.tensor([0, *(m.bit_length() - 1 for m in range(1, w + 1))], device=val.device)

    def range_max(first: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """max(val[first : first + length]) per entry, -1 where length is 0."""
        lv = _at(log2, length)
        a = _at(levels, lv * len(val) + first.clamp(max=len(val) - 1))
        b = _at(levels, lv * len(val) + (first + length - (1 << lv)).clamp(min=0))
        return torch.where(length > 0, torch.maximum(a, b), -1.0)

    return (range_max(lo, i - lo) < val) & (range_max(i + 1, hi - i) <= val)


def _merge_top(
    keys: torch.Tensor, hashes: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k keys [R, k] of keys [R, M] keeping one per window hash, and their columns [R, k]."""
    keys, pick = K.drop_duplicate_windows(keys, hashes).topk(k, dim=1)
    return keys, pick


def _take(x: torch.Tensor, pick: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """x [R, M] or [R, M, W] at columns pick [R, k]; 0 in ``empty`` [R, k] slots. Rows of
    the flattened x are selected (gather with an expanded index is far slower on CPU)."""
    r, m = x.shape[:2]
    flat = (torch.arange(r, device=x.device)[:, None] * m + pick).reshape(-1)  # [R * k]
    out = x.reshape(r * m, *x.shape[2:]).index_select(0, flat).view(*pick.shape, *x.shape[2:])
    return out.masked_fill_(empty if x.dim() == 2 else empty[..., None], 0)


def _fold_windows(
    old: torch.Tensor,
    pick: torch.Tensor,
    new: torch.Tensor,
    empty: torch.Tensor,
    windows: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Windows [R, k, width] after a fold that kept columns pick [R, k] of [old | new]: old
    windows [R, k, width] are copied, new entries (active-entry indices new [R, k], -1 for
    padding) are read from the batch, so only the entries that enter the state are read."""
    k = old.shape[1]
    out = _take(old, pick.clamp(max=k - 1), empty | (pick >= k))
    entry = torch.where(empty | (pick < k), -1, new.gather(1, (pick - k).clamp(min=0)))
    r, c = (entry >= 0).nonzero().unbind(1)
    out[r, c] = windows(entry[r, c])
    return out


def _window_values(
    key: torch.Tensor, val: torch.Tensor, n_pos: int, t: int, left: int, right: int, i: torch.Tensor
) -> torch.Tensor:
    """Windows [X, left + 1 + right] of active entries i [X]: their feature's values at positions
    -left ... +right of their row, 0 where it is not active or outside the row. They are read
    from the active entries themselves (keys feature * n_pos + position [A], ascending, values
    [A]): a window's active positions are the contiguous slice of them that binary search finds."""
    width = left + 1 + right
    k = _at(key, i)  # [X]
    col = k % n_pos % t  # [X] position in the row
    lo = torch.searchsorted(key, k - col.clamp(max=left))  # [X] first entry in the window
    hi = torch.searchsorted(key, k + (t - 1 - col).clamp(max=right), right=True)  # one past
    counts = hi - lo  # [X], >= 1: the entry itself
    owner = torch.repeat_interleave(torch.arange(len(i), device=key.device), counts)  # [Y]
    first = counts.cumsum(0) - counts  # [X] of each owner's run in the [Y] list
    j = torch.arange(len(owner), device=key.device) - _at(first - lo, owner)  # [Y] entries
    at = owner * width + (_at(key, j) - _at(k, owner) + left)  # [Y] cells of the [X, W] windows
    out = val.new_zeros(len(i), width)
    out.view(-1).index_copy_(0, at, _at(val, j))
    return out


def _check_compatible(a: PassState, b: PassState) -> None:
    if a.config != b.config or a.seq_len != b.seq_len or not torch.equal(a.features, b.features):
        raise InvalidArgument(
            "cannot merge pass states computed with different features or parameters",
            field="state",
            fix="merge only states of one job (same features, params and row length)",
        )

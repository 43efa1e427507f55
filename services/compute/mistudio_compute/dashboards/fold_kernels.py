"""The per-entry work of a CPU float32 fold as compiled loops (numba), one pass each.

Torch spends the fold's CPU on whole-array temporaries: a sort to group the active entries by
feature, a hash of every active entry only to compare it with its feature's sample threshold, one
scatter per statistic. Here each is one loop over the entries that allocates only its output, and
releases the GIL so the pass's threads fold their feature parts at once. Every kernel computes
the same bits as the torch path in ``state`` (which CUDA and other dtypes keep), so the states of
both are equal bit for bit. The kernels are compiled for their declared types when this module
is imported, or loaded from the cache on disk (beside this module, else numba's user cache or
``NUMBA_CACHE_DIR``) that ``make setup`` fills: a pass never waits for a compile.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from llvmlite import ir
from numba import njit
from numba import types as nt
from numba.extending import intrinsic

from mistudio_compute.dashboards import blas
from mistudio_compute.dashboards import keys as K
from mistudio_compute.dashboards.grid import FineGrid
from mistudio_compute.encode_tile import AffineEncode, EncodeTile

_MANTISSA_MASK = (1 << 23) - 1
_LIMB_BITS = 8
_SCAN_SPAN = 32  # columns of a tile row tested at once: one int32 bit mask (16, 64 slower)
f4, i4, i8 = nt.float32, nt.int32, nt.int64  # a kernel's argument types: [::1] = C-contiguous


def applies(acts: torch.Tensor) -> bool:
    """Whether a batch's activations [N, F] fold with these kernels (else with torch ops)."""
    return acts.device.type == "cpu" and acts.dtype == torch.float32


def active_entries(
    tiles: Iterable[EncodeTile],
    n_feat: int,
    special: torch.Tensor,
    grid: FineGrid,
    scratch: EntryBuffer | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Active entries of a batch's activations [N, n_feat] (> 0 at positions not ``special``
    [N]) ordered by (feature, position): features, positions [A] int64, values [A] float32 and
    fine-grid cells [A] (feature * n_buckets + ``grid.bucket``). The activations come as tiles
    (rows, acts [R, W], columns [C] of acts, at [C] ascending: the features they are), each
    scanned once as it comes (while an encoder's tile is in cache); dense activations are one
    tile. A feature's tiles must come in row order. ``scratch``: the buffer to scan into (a
    new one when None). The tiles of one encoder block share its column tensors, which are
    checked and converted once, not per tile (a 16,384-feature pass has ~16,000 tiles)."""
    edges, (first, last) = _host(grid.edges()), _bucket_spans(grid)
    flags = _host(special)
    entries = EntryBuffer() if scratch is None else scratch
    entries.end = 0
    block: tuple[torch.Tensor, torch.Tensor, int] | None = None  # the last tile's columns
    for rows, acts, columns, at in tiles:
        dense = _host(acts.float())
        width = dense.shape[1]
        if block is None or block[0] is not columns or block[1] is not at or block[2] != width:
            block = columns, at, width
            cols, feats = _tile_columns(columns, at, width, n_feat)
        row = 0
        while row < dense.shape[0]:
            row, entries.end = _scan_tile(
                dense, dense.view(np.int32), flags[rows], rows.start, cols, feats, edges, first,
                last, row, *entries.arrays, entries.end,
            )  # fmt: skip
            if row < dense.shape[0]:  # a row's entries might not fit
                entries.grow()
    out = _by_feature(*entries.arrays, entries.end, n_feat)
    return tuple(torch.from_numpy(x) for x in out)  # type: ignore[return-value]


def runs_affine(encode: AffineEncode | None) -> bool:
    """Whether ``affine_entries`` can scan ``encode`` (float32 on a CPU whose torch BLAS it
    can call); else the pass takes its tiles from the encoder."""
    return (
        encode is not None
        and encode.x_c.device.type == "cpu"
        and encode.x_c.dtype == encode.weight.dtype == torch.float32
        and blas.sgemm_address() is not None
    )


def affine_entries(
    encode: AffineEncode,
    features: torch.Tensor,
    special: torch.Tensor,
    grid: FineGrid,
    scratch: EntryBuffer | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``active_entries`` of ``features`` [F] (in any order) encoded by
    ``encode`` (``runs_affine``), computed and scanned tile by tile in one compiled call that
    holds no GIL: each tile's matmul by torch's BLAS, its bias and floor applied as the scan
    reads it (the same bits as ``Sae.encode_features``: the matmul, then the bias)."""
    address = blas.sgemm_address()
    assert address is not None, "runs_affine(encode) first"
    edges, (first, last) = _host(grid.edges()), _bucket_spans(grid)
    starts, ptr, cols, feats = _block_plan(_host(features), encode.block)
    entries = EntryBuffer() if scratch is None else scratch
    entries.end = 0
    tile = entries.tile(encode.rows * encode.block)
    x, weight = _host(encode.x_c), _host(encode.weight)
    bias, floor, flags = _host(encode.bias), _host(encode.floor), _host(special)
    block = r0 = row = 0
    while True:
        block, r0, row, entries.end = _affine_scan(
            address, x, weight, bias, floor, starts, ptr, cols, feats, encode.block,
            encode.rows, tile, flags, edges, first, last, block, r0, row, *entries.arrays,
            entries.end,
        )  # fmt: skip
        if block == len(starts):
            break
        entries.grow()  # a row's entries might not fit
    out = _by_feature(*entries.arrays, entries.end, len(features))
    return tuple(torch.from_numpy(x) for x in out)  # type: ignore[return-value]


def _block_plan(
    features: np.ndarray, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The encoder blocks ``features`` [F] fall in: their first columns [B], and for block b
    the wanted columns (from its first) ``cols[ptr[b]:ptr[b + 1]]`` and where they are in
    ``features``, ``feats[...]`` (ascending)."""
    of = features // block
    order = np.argsort(of, kind="stable")
    starts, counts = np.unique(of[order], return_counts=True)
    ptr = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    cols = (features[order] - of[order] * block).astype(np.int64)
    return (starts * block).astype(np.int64), ptr, cols, order.astype(np.int64)


def _tile_columns(
    columns: torch.Tensor, at: torch.Tensor, width: int, n_feat: int
) -> tuple[np.ndarray, np.ndarray]:
    """A tile's columns [C] of its width and the features [C] of the n_feat they are, as the
    scan takes them, once checked to be in range."""
    cols, feats = _host(columns), _host(at)
    if len(cols) and (cols.min() < 0 or cols.max() >= width or feats.min() < 0
                      or feats.max() >= n_feat):  # fmt: skip
        raise ValueError(f"a tile's columns {cols} or features {feats} are out of range")
    return cols, feats


class EntryBuffer:
    """Growing arrays of features, positions, values and cells of the entries scanned so far,
    which ``active_entries`` copies out in feature order. A pass keeps one per feature part for
    all its batches: a fresh one grew several times per batch, each time a copy into new pages
    (~8% of a 16,384-feature part's encode and scan)."""

    def __init__(self) -> None:
        self.arrays = _entry_arrays(1 << 16)
        self.end = 0
        self._tile = np.empty(0, np.float32)

    def tile(self, size: int) -> np.ndarray:
        """A float32 buffer [size] for ``affine_entries``'s encode tiles, kept between batches."""
        if len(self._tile) < size:
            self._tile = np.empty(size, np.float32)
        return self._tile[:size]

    def grow(self) -> None:
        bigger = _entry_arrays(2 * len(self.arrays[0]))
        for old, new in zip(self.arrays, bigger, strict=True):
            new[: self.end] = old[: self.end]
        self.arrays = bigger


def _entry_arrays(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.float32),
            np.empty(size, np.int64))  # fmt: skip


class SampleWrites(NamedTuple):
    """How a batch changes the samples: the slots (flat: feature row * n_sample + column)
    active entries enter, evicting what was kept there, and the new thresholds of those rows."""

    entered_at: torch.Tensor  # [X] slots that active entries enter
    entering: torch.Tensor  # [X] those active entries
    entering_keys: torch.Tensor  # [X] their keys.sample_key
    rows: torch.Tensor  # [R] rows they enter
    thresholds: torch.Tensor  # [R] largest key of each of those rows after the batch


def sample_writes(
    features: torch.Tensor,
    f: torch.Tensor,
    pos: torch.Tensor,
    sample_keys: torch.Tensor,
    threshold: torch.Tensor,
) -> SampleWrites:
    """The sample writes of active entries (SAE features[f], global positions pos [A]) into
    rows sample_keys [F, n_sample] (in no order) of largest keys threshold [F]: each entry's
    ``keys.sample_key`` is compared with its row's threshold, and a changed row's candidates,
    smallest first, take the slot of its largest key (its first empty slot while it has room)
    while they are smaller."""
    out = _sample_writes(*(_host(x) for x in (features, f, pos, sample_keys, threshold)))
    return SampleWrites(*(torch.from_numpy(x) for x in out))


def window_hash(tokens: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """``keys.window_hash`` of CPU tokens [B, T], bit for bit: one loop that hashes each window's
    ids as it sums them, where torch made and hashed a [B, T, width] copy of the windows."""
    salt_a, salt_b = (_host(x) for x in K.window_salts(left + 1 + right, tokens.device))
    return torch.from_numpy(_window_hash(_host(tokens.long()), left, right, salt_a, salt_b))


def top_peaks(
    f: torch.Tensor, n: torch.Tensor, val: torch.Tensor, floor: torch.Tensor, t: int, w: int
) -> torch.Tensor:
    """Active entries [P] (sorted by feature, position) whose value is at least their feature's
    ``floor`` [F] and the largest of their row within ±w positions (earliest wins ties)."""
    peaks = _top_peaks(_host(f), _host(n), _host(val), _host(floor), t, w)
    return torch.from_numpy(peaks)


class TopRows(NamedTuple):
    """The top rows a batch changes (``PassState._fold_top``'s result)."""

    rows: torch.Tensor  # [R] feature rows of the state
    keys: torch.Tensor  # [R, n_top] keys.top_key, best first, EMPTY_TOP padded
    hashes: torch.Tensor  # [R, n_top] window hashes (0 in empty slots)
    windows: torch.Tensor  # [R, n_top, width] window values (0 in empty slots)


def fold_top(
    f: torch.Tensor,
    n: torch.Tensor,
    val: torch.Tensor,
    peaks: torch.Tensor,
    first_position: int,
    win: torch.Tensor,
    top: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    t: int,
    left: int,
    right: int,
) -> TopRows:
    """The top rows that peaks [P] (active entries of features f, batch positions n, values val
    [A], sorted by feature and position; global positions first_position + n) change in a
    state's ``top`` = (keys, hashes [F, n_top], windows [F, n_top, width]); window hashes
    ``win`` [N] by batch position. Each changed row is merged with its candidates best first,
    a key dropped when a better one has its window hash; only the windows kept are read."""
    keys, hashes, windows = (_host(x) for x in top)
    out = _fold_top(
        _host(f), _host(n), _host(val), _host(peaks), first_position, _host(win), keys, hashes,
        windows, t, left, right,
    )  # fmt: skip
    return TopRows(*(torch.from_numpy(x) for x in out))


def window_values(
    f: torch.Tensor,
    n: torch.Tensor,
    val: torch.Tensor,
    t: int,
    left: int,
    right: int,
    i: torch.Tensor,
) -> torch.Tensor:
    """Windows [X, left + 1 + right] of active entries i [X] (of features f, batch positions n,
    values val [A], sorted by feature and position): their feature's values at positions -left
    ... +right of their row of length t, 0 where it is not active or outside the row."""
    out = _window_values(_host(f), _host(n), _host(val), t, left, right, _host(i))
    return torch.from_numpy(out)


def add_statistics(
    hist: torch.Tensor,
    count: torch.Tensor,
    total: torch.Tensor,
    total_sq: torch.Tensor,
    vmin: torch.Tensor,
    vmax: torch.Tensor,
    f: torch.Tensor,
    val: torch.Tensor,
    cell: torch.Tensor,
) -> None:
    """Adds active entries (features f, values val, fine-grid cells [A]) to a state's histogram,
    count, exact moments (``exact_sum``) and min / max, in place."""
    # .numpy(), not _host: the kernel writes into the state's own memory (a part's rows are
    # contiguous views of the whole state's)
    _add_statistics(
        hist.view(-1).numpy(), count.numpy(), total.numpy(), total_sq.numpy(), vmin.numpy(),
        vmax.numpy(), _host(f), _host(val), _host(cell),
    )  # fmt: skip


def _host(x: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a C-contiguous numpy array (the layout the kernels are compiled for)."""
    return np.ascontiguousarray(x.detach().numpy())


@functools.cache
def _bucket_spans(grid: FineGrid) -> tuple[np.ndarray, np.ndarray]:
    """The first and last bucket [2**15] of the positive float32 values sharing each value of
    their top 16 bits (a relative span of 2**-7, narrower than the default grid's buckets): a
    value's bucket is then found in a step or two from its bits, not by binary search."""
    top = np.arange(1 << 15, dtype=np.int64) << 16
    lowest, highest = (
        torch.from_numpy(x.astype(np.int32)).view(torch.float32) for x in (top, top | 0xFFFF)
    )
    first, last = (grid.bucket(x, grid.edges()).numpy() for x in (lowest, highest))
    return first, last


@njit(nogil=True, cache=True, inline="always")
def _bucket(v, span, edges, first, last):  # type: ignore[no-untyped-def]
    """``FineGrid.bucket`` of one positive value (top 16 bits ``span``): edges <= v."""
    b = first[span]
    while b < last[span] and edges[b] <= v:
        b += 1
    return b


@njit(nogil=True, cache=True, inline="always")
def _mix32(x):  # type: ignore[no-untyped-def]
    """``keys.mix32`` of one value in [0, 2**32)."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * K.MIX) & K.M32
    return (x >> 16) ^ x


@njit(nogil=True, cache=True)
def _sample_candidates(features, f, pos, threshold):  # type: ignore[no-untyped-def]
    seeds = np.empty(len(features), np.int64)
    for j in range(len(features)):
        seeds[j] = _mix32((features[j] ^ K.SEED_SAMPLE) & K.M32)
    a = np.empty(len(f), np.int64)
    key = np.empty(len(f), np.int64)
    c = 0
    for i in range(len(f)):
        p = pos[i]
        h = _mix32(_mix32(seeds[f[i]] ^ (p & K.M32)) ^ (p >> 32))
        k = ((h >> 1) << 32) | p
        if k < threshold[f[i]]:
            a[c], key[c] = i, k
            c += 1
    return a[:c], key[:c]


@njit(nogil=True, cache=True, inline="always")
def _add_term(acc, row, term, bit):  # type: ignore[no-untyped-def]
    """``exact_sum._add`` of one term."""
    acc[row, bit >> 3] += term << (bit & (_LIMB_BITS - 1))


@intrinsic
def _lowest_bit(typingctx, x):  # type: ignore[no-untyped-def]
    """The index of the lowest set bit of a nonzero int64 (one instruction: LLVM's cttz)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return nt.int64(nt.int64), codegen


@njit(
    (f4[:, ::1], i4[:, ::1], nt.boolean[::1], i8, i8[::1], i8[::1], f4[::1], i8[::1], i8[::1], i8,
     i8[::1], i8[::1], f4[::1], i8[::1], i8),
    nogil=True, cache=True,
)  # fmt: skip
def _scan_tile(
    acts, bits, special, first_row, columns, at, edges, first, last, row, f, n, val, cell, end
):  # type: ignore[no-untyped-def]
    """Appends the active entries of a tile's rows from ``row`` on, row by row, at ``end`` of
    the entry arrays while a whole row's fit; returns the next row and the new end. Entries are
    by position, then feature: ``_by_feature`` orders them. A row is read in spans of
    _SCAN_SPAN columns, each made a bit mask of its positive values in one vectorised loop (on
    the bits: a positive float32 is a positive int32) whose set bits are then visited lowest
    first, so a column that does not fire (about 99% of them) costs no branch of its own."""
    n_buckets = len(edges) + 1
    feature = np.full(acts.shape[1], -1, np.int64)  # [W] the feature a column is, -1: none
    lo, hi = acts.shape[1], 0  # the columns spanned
    for k in range(len(columns)):
        feature[columns[k]] = at[k]
        lo, hi = min(lo, columns[k]), max(hi, columns[k] + 1)
    while row < acts.shape[0] and end + len(columns) <= len(f):
        if not special[row]:
            values, top = acts[row], bits[row]
            for c0 in range(lo, hi, _SCAN_SPAN):
                span = top[c0 : min(c0 + _SCAN_SPAN, hi)]
                mask = np.int32(0)
                for k in range(len(span)):  # from 0: no negative-index check stops vectorising
                    mask |= np.int32(span[k] > 0) << np.int32(k)
                hits = np.int64(mask) & 0xFFFFFFFF
                while hits != 0:
                    c = c0 + _lowest_bit(hits)  # type: ignore[call-arg]  # (typingctx is numba's)
                    hits &= hits - 1
                    j = feature[c]
                    if j >= 0:
                        v = values[c]
                        f[end], n[end], val[end] = j, first_row + row, v
                        cell[end] = j * n_buckets + _bucket(v, top[c] >> 16, edges, first, last)
                        end += 1
        row += 1
    return row, end


@intrinsic
def _float_bits(typingctx, x):  # type: ignore[no-untyped-def]
    """The bits of a float32 as an int32."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return nt.int32(nt.float32), codegen


@intrinsic
def _fortran_call(typingctx, fn, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13):  # type: ignore[no-untyped-def]
    """Calls the function at address ``fn`` with 13 pointer arguments given as addresses (a
    Fortran BLAS routine: every argument by reference). The address is an argument, not a
    constant, so the kernel calling it can be cached on disk."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        pointer = ir.IntType(8).as_pointer()
        signature_13 = ir.FunctionType(ir.VoidType(), [pointer] * 13)
        callee = builder.inttoptr(args[0], signature_13.as_pointer())
        builder.call(callee, [builder.inttoptr(a, pointer) for a in args[1:]])
        return context.get_dummy_value()

    return nt.void(*([nt.int64] * 14)), codegen


@njit(
    (i8, f4[:, ::1], f4[:, ::1], f4[::1], f4[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8, i8,
     f4[::1], nt.boolean[::1], f4[::1], i8[::1], i8[::1], i8, i8, i8, i8[::1], i8[::1], f4[::1],
     i8[::1], i8),
    nogil=True, cache=True,
)  # fmt: skip
def _affine_scan(
    sgemm,
    x,
    weight,
    bias,
    floor,
    starts,
    ptr,
    cols,
    feats,
    block_width,
    tile_rows,
    tile,
    special,
    edges,
    first,
    last,
    block,
    r0,
    row,
    f,
    n,
    val,
    cell,
    end,
):  # type: ignore[no-untyped-def]
    """``_scan_tile`` over the tiles of an ``AffineEncode`` that it computes itself, from tile
    (``block``, ``r0``) row ``row`` on: each tile [rows, width] is ``x[r0:] @ weight[:, start:]``
    by ``sgemm`` (C's row-major tile is BLAS's column-major transpose), and column c fires where
    ``tile + bias > floor``. Returns where to resume when a row's entries might not fit (the
    tile is computed again) and the new end; the block is ``len(starts)`` when done."""
    n_rows, (d_in, d_sae) = x.shape[0], weight.shape
    n_buckets = len(edges) + 1
    dims = np.empty(6, np.int32)  # Fortran's by-reference integer arguments
    scale = np.empty(2, np.float32)  # alpha 1, beta 0: the tile is overwritten
    scale[0], scale[1] = 1.0, 0.0
    trans = np.full(1, 78, np.uint8)  # "N": neither operand transposed
    feature = np.full(block_width, -1, np.int64)  # [W] the feature a column is, -1: none
    while block < len(starts):
        start = starts[block]
        width = min(block_width, d_sae - start)
        lo, hi = width, 0  # the columns spanned
        for k in range(ptr[block], ptr[block + 1]):
            feature[cols[k]] = feats[k]
            lo, hi = min(lo, cols[k]), max(hi, cols[k] + 1)
        wanted = ptr[block + 1] - ptr[block]
        b, fl = bias[start : start + width], floor[start : start + width]
        while r0 < n_rows:
            m = min(tile_rows, n_rows - r0)
            dims[0], dims[1], dims[2] = width, m, d_in  # the column-major product's m, n, k
            dims[3], dims[4], dims[5] = d_sae, d_in, width  # lda, ldb, ldc
            d, s, t = dims.ctypes.data, scale.ctypes.data, trans.ctypes.data
            _fortran_call(sgemm, t, t, d, d + 4, d + 8, s, weight.ctypes.data + 4 * start,
                          d + 12, x.ctypes.data + 4 * d_in * r0, d + 16, s + 4, tile.ctypes.data,
                          d + 20)  # type: ignore[call-arg]  # fmt: skip
            acts = tile[: m * width].reshape((m, width))
            while row < m:
                if end + wanted > len(f):
                    return block, r0, row, end
                if not special[r0 + row]:
                    values = acts[row]
                    for c0 in range(lo, hi, _SCAN_SPAN):
                        c1 = min(c0 + _SCAN_SPAN, hi)
                        span, over, above = values[c0:c1], b[c0:c1], fl[c0:c1]
                        mask = np.int32(0)
                        for k in range(len(span)):  # from 0: no negative-index check
                            mask |= np.int32(span[k] + over[k] > above[k]) << np.int32(k)
                        hits = np.int64(mask) & 0xFFFFFFFF
                        while hits != 0:
                            c = c0 + _lowest_bit(hits)  # type: ignore[call-arg]
                            hits &= hits - 1
                            j = feature[c]
                            if j >= 0:
                                v = values[c] + b[c]
                                f[end], n[end], val[end] = j, r0 + row, v
                                span_of = _float_bits(v) >> 16  # type: ignore[call-arg]
                                cell[end] = j * n_buckets + _bucket(v, span_of, edges, first, last)
                                end += 1
                row += 1
            row, r0 = 0, r0 + tile_rows
        for k in range(ptr[block], ptr[block + 1]):
            feature[cols[k]] = -1
        r0, block = 0, block + 1
    return block, r0, row, end


@njit((i8[::1], i8[::1], f4[::1], i8[::1], i8, i8), nogil=True, cache=True)
def _by_feature(f, n, val, cell, end, n_feat):  # type: ignore[no-untyped-def]
    """The first ``end`` entries in feature order, stably (a counting sort): a feature's entries
    were appended in position order."""
    start = np.zeros(n_feat + 1, np.int64)
    for i in range(end):
        start[f[i] + 1] += 1
    start = np.cumsum(start)
    out_f, out_n = np.empty(end, np.int64), np.empty(end, np.int64)
    out_val, out_cell = np.empty(end, np.float32), np.empty(end, np.int64)
    for i in range(end):
        k = start[f[i]]
        start[f[i]] = k + 1
        out_f[k], out_n[k], out_val[k], out_cell[k] = f[i], n[i], val[i], cell[i]
    return out_f, out_n, out_val, out_cell


@njit((i8[::1], i8[::1], i8[::1], i8[:, ::1], i8[::1]), nogil=True, cache=True)
def _sample_writes(features, f, pos, sample_keys, threshold):  # type: ignore[no-untyped-def]
    a, key = _sample_candidates(features, f, pos, threshold)
    n_feat, k = sample_keys.shape
    entered_at = np.empty(len(a), np.int64)
    entering = np.empty(len(a), np.int64)
    entering_keys = np.empty(len(a), np.int64)
    rows = np.empty(min(len(a), n_feat), np.int64)
    thresholds = np.empty_like(rows)
    row = np.empty(k, np.int64)  # a changed row's keys as the batch's entries enter it
    enters = changed = 0
    i = 0
    while i < len(a):  # one changed row [i, j) of the candidates (sorted by feature)
        r, j = f[a[i]], i + 1
        while j < len(a) and f[a[j]] == r:
            j += 1
        row[:] = sample_keys[r]
        col = np.argmax(row)  # the largest key; the first empty slot while there is room
        for c in i + np.argsort(key[i:j]):
            if key[c] > row[col]:
                break
            room = row[col] == K.EMPTY_SAMPLE
            row[col] = key[c]
            entered_at[enters], entering[enters], entering_keys[enters] = r * k + col, a[c], key[c]
            enters += 1
            if room:  # the next empty slot, if any, lies after the first one
                col += 1
                while col < k and row[col] != K.EMPTY_SAMPLE:
                    col += 1
            if not room or col == k:
                col = np.argmax(row)
        rows[changed], thresholds[changed] = r, row[col]
        changed += 1
        i = j
    return (
        entered_at[:enters].copy(), entering[:enters].copy(), entering_keys[:enters].copy(),
        rows[:changed].copy(), thresholds[:changed].copy(),
    )  # fmt: skip


@njit((i8[:, ::1], i8, i8, i8[::1], i8[::1]), nogil=True, cache=True)
def _window_hash(tokens, left, right, salt_a, salt_b):  # type: ignore[no-untyped-def]
    b, t = tokens.shape
    out = np.empty((b, t), np.int64)
    for r in range(b):
        for p in range(t):
            lane_a = lane_b = 0
            for o in range(left + 1 + right):  # ids outside the row hash as 0 (-1 + 1)
                q = p + o - left
                v = tokens[r, q] + 1 if 0 <= q < t else 0
                lane_a += _mix32((v ^ salt_a[o]) & K.M32)
                lane_b += _mix32((v ^ salt_b[o]) & K.M32)
            out[r, p] = ((_mix32(lane_a & K.M32) >> 1) << 32) | _mix32(lane_b & K.M32)
    return out


@njit((i8[::1], i8[::1], f4[::1], f4[::1], i8, i8), nogil=True, cache=True)
def _top_peaks(f, n, val, floor, t, w):  # type: ignore[no-untyped-def]
    """Each candidate looks at its neighbours in the sorted list: the active entries of its
    feature and row within ±w positions (entries below the floor cannot beat it)."""
    out = np.empty(len(f), np.int64)
    c = 0
    for i in range(len(f)):
        v = val[i]
        if v < floor[f[i]]:
            continue
        row_start = n[i] - n[i] % t
        lo, hi = max(row_start, n[i] - w), min(row_start + t - 1, n[i] + w)
        peak = True
        j = i - 1
        while peak and j >= 0 and f[j] == f[i] and n[j] >= lo:
            peak = val[j] < v
            j -= 1
        j = i + 1
        while peak and j < len(f) and f[j] == f[i] and n[j] <= hi:
            peak = val[j] <= v
            j += 1
        if peak:
            out[c] = i
            c += 1
    return out[:c].copy()


@njit(nogil=True, cache=True, inline="always")
def _fill_window(out, f, n, val, t, left, right, e):  # type: ignore[no-untyped-def]
    """Writes entry e's window into the zeros ``out`` [width]: a window's active positions are
    the entry's neighbours in the sorted list."""
    row_start = n[e] - n[e] % t
    lo, hi = max(row_start, n[e] - left), min(row_start + t - 1, n[e] + right)
    j = e
    while j >= 0 and f[j] == f[e] and n[j] >= lo:
        out[n[j] - n[e] + left] = val[j]
        j -= 1
    j = e + 1
    while j < len(f) and f[j] == f[e] and n[j] <= hi:
        out[n[j] - n[e] + left] = val[j]
        j += 1


@njit(
    (i8[::1], i8[::1], f4[::1], i8[::1], i8, i8[::1], i8[:, ::1], i8[:, ::1], f4[:, :, ::1], i8, i8,
     i8),
    nogil=True, cache=True,
)  # fmt: skip
def _fold_top(f, n, val, peaks, first, win, top_keys, top_hash, top_windows, t, left, right):  # type: ignore[no-untyped-def]
    """Only peaks that beat their row's last kept key can change it: they are found first, then
    each changed row is merged with them (sorted best first) into new rows."""
    k = top_keys.shape[1]
    bits = val.view(np.int32)
    cand = np.empty(len(peaks), np.int64)  # [C] active entries, by feature
    cand_key = np.empty(len(peaks), np.int64)
    c = n_rows = 0
    for x in range(len(peaks)):
        e = peaks[x]
        key = (np.int64(bits[e]) << 32) | (K.M32 - (first + n[e]))  # keys.top_key
        if key > top_keys[f[e], k - 1]:
            if c == 0 or f[cand[c - 1]] != f[e]:
                n_rows += 1
            cand[c], cand_key[c] = e, key
            c += 1
    rows = np.empty(n_rows, np.int64)
    keys = np.full((n_rows, k), K.EMPTY_TOP, np.int64)
    hashes = np.zeros((n_rows, k), np.int64)
    windows = np.zeros((n_rows, k, left + 1 + right), np.float32)
    i = r = 0
    while i < c:  # one changed row: candidates [i, j)
        row, j = f[cand[i]], i + 1
        while j < c and f[cand[j]] == row:
            j += 1
        order = i + np.argsort(-cand_key[i:j])  # best first (keys are unique)
        rows[r] = row
        old = new = out = 0
        while out < k:
            old_key = top_keys[row, old] if old < k else K.EMPTY_TOP
            new_key = cand_key[order[new]] if i + new < j else K.EMPTY_TOP
            if old_key == K.EMPTY_TOP and new_key == K.EMPTY_TOP:
                break
            from_old = old_key > new_key
            e = -1 if from_old else cand[order[new]]
            h = top_hash[row, old] if from_old else win[n[e]]
            seen = False
            for s in range(out):
                seen = seen or hashes[r, s] == h
            if not seen:  # the best key of its window
                keys[r, out], hashes[r, out] = max(old_key, new_key), h
                if from_old:
                    windows[r, out] = top_windows[row, old]
                else:
                    _fill_window(windows[r, out], f, n, val, t, left, right, e)
                out += 1
            old += from_old
            new += not from_old
        r += 1
        i = j
    return rows, keys, hashes, windows


@njit((i8[::1], i8[::1], f4[::1], i8, i8, i8, i8[::1]), nogil=True, cache=True)
def _window_values(f, n, val, t, left, right, entries):  # type: ignore[no-untyped-def]
    out = np.zeros((len(entries), left + 1 + right), np.float32)
    for x in range(len(entries)):
        _fill_window(out[x], f, n, val, t, left, right, entries[x])
    return out


_STATISTICS_TYPES = [
    (c[::1], c[::1], i8[:, ::1], i8[:, ::1], f4[::1], f4[::1], i8[::1], f4[::1], i8[::1])
    for c in (i4, i8)  # state.count_dtype
]


@njit(_STATISTICS_TYPES, nogil=True, cache=True)
def _add_statistics(hist, count, total, total_sq, vmin, vmax, f, val, cell):  # type: ignore[no-untyped-def]
    bits = val.view(np.int32)
    for i in range(len(f)):
        j, v = f[i], val[i]
        hist[cell[i]] += 1
        count[j] += 1
        vmin[j] = min(vmin[j], v)
        vmax[j] = max(vmax[j], v)
        biased = np.int64(bits[i]) >> 23  # as exact_sum._split
        normal = 1 if biased > 0 else 0
        m = (np.int64(bits[i]) & _MANTISSA_MASK) | (normal << 23)
        e = biased - normal
        _add_term(total, j, m, e)
        high, low = m >> 12, m & 0xFFF
        _add_term(total_sq, j, high * high, 2 * e + 24)
        _add_term(total_sq, j, high * low, 2 * e + 13)
        _add_term(total_sq, j, low * low, 2 * e)

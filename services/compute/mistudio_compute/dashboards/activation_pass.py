"""The streaming pass: model forward to the hook, SAE encode, fold the batch into the state."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
import torch
from mistudio_common.errors import Cancelled, FailedPrecondition, InvalidArgument

from mistudio_compute.dashboards.batching import for_each_batch
from mistudio_compute.dashboards.checkpoint import (
    Cursor,
    checkpoint_features,
    load_checkpoint,
    save_checkpoint,
)
from mistudio_compute.dashboards.fold_kernels import EntryBuffer, runs_affine
from mistudio_compute.dashboards.inputs import (
    AffineEncoder,
    CancelCheck,
    DashboardInputs,
    ProgressCallback,
    Stage,
    TileEncoder,
)
from mistudio_compute.dashboards.kept_activations import KeptActivations
from mistudio_compute.dashboards.params import validate_batch_size, validate_tokens
from mistudio_compute.dashboards.state import (
    ActiveEntries,
    BatchTokens,
    Fold,
    PassState,
    StateConfig,
    affine_entries,
    dense_entries,
    tiled_entries,
)
from mistudio_compute.dashboards.threads import default_threads, even_ranges, one_torch_thread
from mistudio_compute.encode_tile import AffineEncode

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Checkpointing:
    """Write the state to ``path`` after the first batch that ends ``every_seconds`` or more
    after the last write; resume from it if present. A bound in time rather than in batches: a
    write costs the whole state (332 MB, 0.7 s at 16,384 features), so it is paid only where
    the work it saves is worth more: a crash loses at most ``every_seconds`` of the pass, and
    an interruption (a pause, a shutdown) loses none, during the pass or after it
    (``PassRunner.keep``)."""

    path: Path
    every_seconds: float = 60.0


@dataclass(slots=True)
class PassResult:
    state: PassState
    batch_size: int
    """The batch size the pass ended with (smaller than asked after out-of-memory)."""
    unsaved: Cursor | None = None
    """Where the pass ended, when its checkpoint does not hold the finished state yet."""


class PassRunner(Protocol):
    """Runs the pass of one feature shard over every row, resumably: in this process
    (``LocalPass``) or as token-range shards on a Ray cluster (``distributed.RayPass``)."""

    def run(
        self,
        features: torch.Tensor,
        batch_size: int,
        progress: ProgressCallback | None,
        cancel: CancelCheck | None,
    ) -> PassResult: ...

    def saved_features(self) -> torch.Tensor | None:
        """The features of the shard whose progress is saved (None when nothing is)."""
        ...

    def keep(self, finished: PassResult) -> None:
        """Saves the finished pass ``run`` returned, so that a computation interrupted after
        it resumes at the shard's finalisation rather than running the pass again."""
        ...

    def discard(self) -> None:
        """Drops the saved progress (its shard was handed on)."""
        ...


@dataclass(frozen=True, slots=True)
class LocalPass:
    """The pass in this process, checkpointed to one file (a PassRunner); with ``kept``, the
    hook activations one shard's pass read serve the next shards' passes."""

    inputs: DashboardInputs
    config: StateConfig
    checkpoint: Checkpointing | None = None
    kept: KeptActivations | None = None

    def run(
        self,
        features: torch.Tensor,
        batch_size: int,
        progress: ProgressCallback | None,
        cancel: CancelCheck | None,
    ) -> PassResult:
        return run_activation_pass(
            self.inputs, self.config, features, batch_size=batch_size,
            checkpoint=self.checkpoint, progress=progress, cancel=cancel, kept=self.kept,
        )  # fmt: skip

    def saved_features(self) -> torch.Tensor | None:
        return None if self.checkpoint is None else checkpoint_features(self.checkpoint.path)

    def keep(self, finished: PassResult) -> None:
        if self.checkpoint is not None and finished.unsaved is not None:
            save_checkpoint(self.checkpoint.path, finished.state, finished.unsaved)

    def discard(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.path.unlink(missing_ok=True)


def hook_rows(
    inputs: DashboardInputs,
    tokens: torch.Tensor,
    *,
    rows: range | None = None,
    kept: KeptActivations | None = None,
) -> torch.Tensor:
    """tokens [B, T] (rows ``rows`` of the source) -> hook activations [B*T, d_in]: from
    ``kept`` when it holds this batch (``rows`` names it), else from the model forward."""
    with torch.no_grad():
        if kept is None or rows is None:
            x = inputs.reader.activations(tokens)  # [B, T, d_in]
        else:
            x = kept.read(inputs.reader, tokens, rows)
    if x.dim() != 3 or x.shape[:2] != tokens.shape:
        raise InvalidArgument(
            f"hook activations have shape {tuple(x.shape)} for tokens "
            f"{tuple(tokens.shape)}, expected [B, T, d_in]",
            field="hook_point",
            fix="read a residual-stream-like hook with one vector per token",
        )
    return x.reshape(-1, x.shape[-1])


def encode_rows(
    inputs: DashboardInputs, flat: torch.Tensor, features: torch.Tensor | None = None
) -> torch.Tensor:
    """Hook activations [B*T, d_in] -> SAE activations [B*T, F] of ``features`` [F] (all d_sae
    when None) on the encoder's device."""
    with torch.no_grad():
        if features is None:
            z = inputs.encoder.encode(flat)  # [B*T, d_sae]
        else:
            z = inputs.encoder.encode_features(flat, features)  # [B*T, F]
    width = inputs.encoder.d_sae if features is None else len(features)
    if z.shape != (flat.shape[0], width):
        raise InvalidArgument(
            f"the SAE encoded {tuple(flat.shape)} activations to {tuple(z.shape)}, expected "
            f"[{flat.shape[0]}, {width}]",
            field="sae",
            fix="check that the SAE's d_in matches the hook and d_sae its feature count",
        )
    return z


def read_rows(tokens: np.ndarray, rows: np.ndarray | slice, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(tokens[rows]).astype(np.int64)).to(device)


def run_activation_pass(
    inputs: DashboardInputs,
    config: StateConfig,
    features: torch.Tensor,
    *,
    rows: range | None = None,
    batch_size: int = 32,
    checkpoint: Checkpointing | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    kept: KeptActivations | None = None,
    threads: int | None = None,
) -> PassResult:
    """One pass over ``rows`` (default: all) of the token source for ``features`` [F]; hook
    activations are read from and kept in ``kept`` when given. ``threads``: the cores it
    uses (default: torch's thread count on a CPU, 1 on an accelerator)."""
    tokens = inputs.source.tokens
    rows = range(tokens.shape[0]) if rows is None else rows
    validate_tokens(tokens, rows)
    validate_batch_size(batch_size)
    device = inputs.encoder.device
    seq_len = tokens.shape[1]
    every_feature = len(features) == inputs.encoder.d_sae
    features = features.to(device)

    state = PassState.empty(config, features, seq_len, device, len(rows) * seq_len)
    next_row = rows.start
    if checkpoint is not None and checkpoint.path.exists():
        state, cursor = load_checkpoint(checkpoint.path, device)
        _check_resumable(state, cursor, config, features, seq_len, rows, checkpoint.path)
        next_row, batch_size = cursor.next_row, cursor.batch_size

    if threads is None:
        threads = default_threads(device)
    shard = None if every_feature else features
    folder = BatchFolder(inputs, state, shard, kept, threads, rows.stop)

    unsaved: Cursor | None = None  # the last folded batch, while no checkpoint holds it
    saved_at = time.monotonic()  # the pass's start counts as a save: its work is not lost yet

    def after(j: int, size: int) -> None:
        nonlocal unsaved, saved_at
        unsaved = Cursor(j, rows.start, rows.stop, size)
        if checkpoint is None:
            return
        if time.monotonic() - saved_at >= checkpoint.every_seconds:
            save_checkpoint(checkpoint.path, state, unsaved)
            unsaved, saved_at = None, time.monotonic()

    try:
        final = for_each_batch(
            next_row,
            rows.stop,
            batch_size,
            folder.step,
            stage=Stage.ACTIVATION_PASS,
            progress=progress,
            cancel=cancel,
            after=after,
            items_per_index=seq_len,
            origin=rows.start,
        )
    except Cancelled:
        # A pause or a shutdown resumes here rather than at the last periodic checkpoint (a
        # cancelled job's checkpoint is dropped by its owner).
        if checkpoint is not None and unsaved is not None:
            save_checkpoint(checkpoint.path, state, unsaved)
        raise
    finally:
        folder.close()
    return PassResult(state, final, unsaved)


class BatchFolder:
    """Folds batches of rows into a pass state using ``threads`` cores: each thread encodes and
    folds one contiguous part of the features (``PassState.parts``, one torch thread each: the
    update's many small ops cost about 1.3x the CPU time on two intra-op threads), and threads
    of their own run the model forwards (and read the tokens) of the next ``AHEAD`` batches
    meanwhile, so that a core a finished part leaves is taken by a forward rather than idle
    until the batch's last part is done. A batch's parts are all folded before any is
    committed, so a failed batch (out of memory) leaves the state as it was; a batch read ahead
    is only used when it comes with the same rows."""

    AHEAD = 2
    """Batches read ahead: one more than the next, so the forwards never wait for a fold."""
    READERS = 2
    """Threads running the forwards of the batches read ahead, so that they run at once (where
    the reader allows it): at 4,096 features one thread's forwards took as long as the folds on
    both cores, and the pass waited on them."""

    def __init__(
        self,
        inputs: DashboardInputs,
        state: PassState,
        features: torch.Tensor | None,
        kept: KeptActivations | None,
        threads: int,
        stop: int,
    ) -> None:
        """For a pass over rows before ``stop``."""
        self._inputs, self._state, self._kept, self._stop = inputs, state, kept, stop
        ranges = even_ranges(0, len(state.features), threads)
        every = state.features if features is None else features
        several = len(ranges) > 1
        self._parts = state.parts(ranges) if several else [state]
        self._features = [every[lo:hi] for lo, hi in ranges] if several else [features]
        self._pool: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._threads_before = torch.get_num_threads()
        if threads > 1:
            self._pool = ThreadPoolExecutor(threads, "pass", initializer=one_torch_thread)
            self._reader = ThreadPoolExecutor(
                self.READERS, "pass-read", initializer=one_torch_thread
            )
        self._ahead: deque[tuple[tuple[int, int], Future[_Batch]]] = deque()
        encoder = inputs.encoder
        on_cpu = state.features.device.type == "cpu"
        self._tiled = encoder if isinstance(encoder, TileEncoder) and on_cpu else None
        self._affine = encoder if isinstance(encoder, AffineEncoder) and on_cpu else None
        self._scratch = [EntryBuffer() for _ in self._parts] if self._tiled is not None else []

    def step(self, i: int, j: int) -> None:
        """Folds rows [i, j) of the source into the state (``for_each_batch``'s step)."""
        read = self._batch(i, j)
        batch, facts = read.tokens, read.facts

        def fold(k: int) -> Fold:
            return self._parts[k].fold(self._entries(k, read), batch, i, facts)

        folds = self._start(fold, range(len(self._parts)))
        self._read_ahead(j, j - i)
        done = self._finish(folds)
        self._finish(self._start(Fold.commit, done))
        self._state.count_tokens(batch, done)

    def close(self) -> None:
        """Waits for the threads' work and ends them (the pass is over or failed)."""
        if self._pool is not None and self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._pool.shutdown(wait=True)
            self._pool = self._reader = None
            self._ahead.clear()
            torch.set_num_threads(self._threads_before)

    def _entries(self, k: int, read: _Batch) -> ActiveEntries:
        """Part ``k``'s active entries of the batch's hook activations: on a CPU, taken from
        each encode tile while it is in cache (the dense [B*T, F_k] activations would be tens
        of MB, written out once and read twice), computed by the scan itself where the batch
        comes with its ``AffineEncode``; else from the dense activations."""
        part, x, special = self._parts[k], read.x, read.facts.special
        if self._tiled is not None:
            grid, scratch = part.config.grid, self._scratch[k]
            if read.encode is not None:
                return affine_entries(read.encode, part.features, special, grid, scratch)
            tiles = self._tiled.encode_tiles(x, part.features)
            return tiled_entries(tiles, len(part.features), special, grid, scratch)
        acts = encode_rows(self._inputs, x, self._features[k])  # [B*T, F_k]
        return dense_entries(acts, special, part.config.grid)

    def _read(self, i: int, j: int) -> _Batch:
        """Rows [i, j): their tokens, hook activations and what the tokens tell the state."""
        batch = read_rows(self._inputs.source.tokens, slice(i, j), self._state.features.device)
        x = hook_rows(self._inputs, batch, rows=range(i, j), kept=self._kept)
        encode = None if self._affine is None else self._affine.affine_encode(x)
        return _Batch(batch, x, self._state.batch_tokens(batch),
                      encode if runs_affine(encode) else None)  # fmt: skip

    def _batch(self, i: int, j: int) -> _Batch:
        """Rows [i, j), as read ahead when they were, else read now (after waiting for the reads
        under way: their rows have other boundaries, the batch size was halved)."""
        if self._ahead and self._ahead[0][0] == (i, j):
            return self._ahead.popleft()[1].result()
        wait([future for _, future in self._ahead])
        self._ahead.clear()
        return self._read(i, j)

    def _read_ahead(self, j: int, size: int) -> None:
        """Starts reading the batches of ``size`` rows after row ``j`` up to ``AHEAD`` ahead."""
        if self._reader is None:
            return
        start = self._ahead[-1][0][1] if self._ahead else j
        while len(self._ahead) < self.AHEAD and start < self._stop:
            rows = (start, min(self._stop, start + size))
            self._ahead.append((rows, self._reader.submit(self._read, *rows)))
            start = rows[1]

    def _start(self, fn: Callable[[_T], _R], items: Iterable[_T]) -> list[Future[_R]]:
        """fn of every item, on the threads (here, at once, without them)."""
        if self._pool is not None:
            return [self._pool.submit(fn, item) for item in items]
        futures = []
        for item in items:
            future: Future[_R] = Future()
            future.set_result(fn(item))
            futures.append(future)
        return futures

    @staticmethod
    def _finish(futures: list[Future[_R]]) -> list[_R]:
        """The results, once every call has ended (the first error raised after that)."""
        wait(futures)
        return [future.result() for future in futures]


class _Batch(NamedTuple):
    """A batch as its parts fold it (``BatchFolder._read``)."""

    tokens: torch.Tensor  # [B, T]
    x: torch.Tensor  # [B*T, d_in] hook activations
    facts: BatchTokens  # PassState.batch_tokens(tokens)
    encode: AffineEncode | None
    """x's encode for the compiled scan, centred once for every part (None: the encoder's tiles)."""


def _check_resumable(
    state: PassState,
    cursor: Cursor,
    config: StateConfig,
    features: torch.Tensor,
    seq_len: int,
    rows: range,
    path: Path,
) -> None:
    same = (
        state.config == config
        and state.seq_len == seq_len
        and torch.equal(state.features, features)
        and (cursor.start_row, cursor.stop_row) == (rows.start, rows.stop)
    )
    if not same:
        raise FailedPrecondition(
            f"checkpoint {path} belongs to a pass with other features, rows or parameters",
            field="checkpoint",
            fix="delete the checkpoint or resume with the job's original request",
        )

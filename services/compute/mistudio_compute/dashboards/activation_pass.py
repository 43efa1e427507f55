"""The streaming pass: model forward to the hook, SAE encode, fold the batch into the state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
from mistudio_compute.dashboards.inputs import (
    CancelCheck,
    DashboardInputs,
    ProgressCallback,
    Stage,
)
from mistudio_compute.dashboards.kept_activations import KeptActivations
from mistudio_compute.dashboards.params import validate_batch_size, validate_tokens
from mistudio_compute.dashboards.state import PassState, StateConfig


@dataclass(frozen=True, slots=True)
class Checkpointing:
    """Write the state to ``path`` every ``every_batches`` batches; resume from it if present."""

    path: Path
    every_batches: int = 50


@dataclass(slots=True)
class PassResult:
    state: PassState
    batch_size: int
    """The batch size the pass ended with (smaller than asked after out-of-memory)."""


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

    def discard(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.path.unlink(missing_ok=True)


def encode_rows(
    inputs: DashboardInputs,
    tokens: torch.Tensor,
    features: torch.Tensor | None = None,
    *,
    rows: range | None = None,
    kept: KeptActivations | None = None,
) -> torch.Tensor:
    """tokens [B, T] (rows ``rows`` of the source) -> activations [B*T, F] of ``features`` (all
    d_sae when None) on the encoder's device; the hook activations come from ``kept`` when it
    holds this batch (``rows`` names it), else from the model forward."""
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
        flat = x.reshape(-1, x.shape[-1])  # [B*T, d_in]
        if features is None:
            z = inputs.encoder.encode(flat)  # [B*T, d_sae]
        else:
            z = inputs.encoder.encode_features(flat, features)  # [B*T, F]
    width = inputs.encoder.d_sae if features is None else len(features)
    if z.shape != (flat.shape[0], width):
        raise InvalidArgument(
            f"the SAE encoded {tuple(x.shape)} activations to {tuple(z.shape)}, expected "
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
) -> PassResult:
    """One pass over ``rows`` (default: all) of the token source for ``features`` [F]; hook
    activations are read from and kept in ``kept`` when given."""
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

    def step(i: int, j: int) -> None:
        batch = read_rows(tokens, slice(i, j), device)  # [B, T]
        shard = None if every_feature else features
        acts = encode_rows(inputs, batch, shard, rows=range(i, j), kept=kept)  # [B*T, F]
        state.update(acts, batch, i)

    batches = 0
    unsaved: Cursor | None = None  # the last folded batch, while no checkpoint holds it

    def after(j: int, size: int) -> None:
        nonlocal batches, unsaved
        batches += 1
        unsaved = Cursor(j, rows.start, rows.stop, size)
        if checkpoint is not None and (batches % checkpoint.every_batches == 0 or j == rows.stop):
            save_checkpoint(checkpoint.path, state, unsaved)
            unsaved = None

    try:
        final = for_each_batch(
            next_row,
            rows.stop,
            batch_size,
            step,
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
    return PassResult(state, final)


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

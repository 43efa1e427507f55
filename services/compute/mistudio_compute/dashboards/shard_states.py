"""Finished token shards' states, kept so that a restarted pass re-attaches to them.

A shard's state is a pass checkpoint file (``checkpoint.save_checkpoint``) named after its row
range. Where the files live is a ``ShardStore``: a folder beside the computation's checkpoint
(``ShardFolder``, only the replica that wrote it sees it), or an object store every replica and
every Ray worker reaches (``mistudio_compute.shard_objects``). Whatever the store, a file is used
only when it belongs to the pass asking for it (same features, parameters and rows); any other is
computed again rather than failing the job.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from mistudio_compute.dashboards.activation_pass import PassResult
from mistudio_compute.dashboards.checkpoint import (
    Cursor,
    OutdatedCheckpoint,
    checkpoint_features,
    load_checkpoint,
    save_checkpoint,
)
from mistudio_compute.dashboards.state import StateConfig

_log = logging.getLogger(__name__)


class ShardStore(Protocol):
    """Where one computation's finished token shards are kept between runs."""

    @property
    def shared(self) -> bool:
        """Whether every Ray worker reaches it, so each shard task saves its own state (else
        the driver saves what the tasks return)."""
        ...

    def save(self, rows: range, result: PassResult) -> None: ...

    def load(self, rows: range, config: StateConfig, features: torch.Tensor) -> PassResult | None:
        """The saved state of ``rows`` when it belongs to this pass, else None."""
        ...

    def features(self) -> torch.Tensor | None:
        """The features the saved shards belong to (None when none is saved)."""
        ...

    def clear(self) -> None: ...


def shard_name(rows: range) -> str:
    return f"rows-{rows.start}-{rows.stop}.safetensors"


def write_shard(path: Path, rows: range, result: PassResult) -> None:
    save_checkpoint(path, result.state, Cursor(rows.stop, rows.start, rows.stop, result.batch_size))


def read_shard(
    path: Path, rows: range, config: StateConfig, features: torch.Tensor, where: str
) -> PassResult | None:
    """The state saved at ``path`` (reported as ``where``) when it is ``rows`` of this pass;
    None, with a warning, for a shard of another pass or in an older format."""
    try:
        state, cursor = load_checkpoint(path, torch.device("cpu"))
    except OutdatedCheckpoint as outdated:
        _log.warning("recomputing rows %s-%s: %s", rows.start, rows.stop, outdated)
        return None
    mine = (
        state.config == config
        and torch.equal(state.features, features)
        and (cursor.start_row, cursor.stop_row, cursor.next_row)
        == (rows.start, rows.stop, rows.stop)
    )
    if not mine:
        _log.warning(
            "recomputing rows %s-%s: %s belongs to a pass with other features or parameters",
            rows.start, rows.stop, where,
        )  # fmt: skip
        return None
    return PassResult(state, cursor.batch_size)


@dataclass(frozen=True, slots=True)
class ShardFolder:
    """Finished token shards' states in ``folder`` on this replica's disk (a ShardStore)."""

    folder: Path
    shared = False

    def path(self, rows: range) -> Path:
        return self.folder / shard_name(rows)

    def save(self, rows: range, result: PassResult) -> None:
        write_shard(self.path(rows), rows, result)

    def load(self, rows: range, config: StateConfig, features: torch.Tensor) -> PassResult | None:
        path = self.path(rows)
        if not path.exists():
            return None
        return read_shard(path, rows, config, features, str(path))

    def features(self) -> torch.Tensor | None:
        saved = sorted(self.folder.glob("rows-*.safetensors"))
        return checkpoint_features(saved[0]) if saved else None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __str__(self) -> str:
        return str(self.folder)

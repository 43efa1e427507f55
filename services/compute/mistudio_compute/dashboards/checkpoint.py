"""Checkpoints of the streaming pass: the state's tensors plus a JSON cursor, in one file.

The cursor (next row, rows, batch size, configuration) lives in the safetensors metadata, so a
checkpoint is written with one atomic rename and can never be half old, half new.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from mistudio_common.errors import FailedPrecondition
from safetensors import safe_open
from safetensors.torch import save_file

from mistudio_compute.dashboards.grid import FineGrid
from mistudio_compute.dashboards.state import PassState, StateConfig

FORMAT_VERSION = 5
_META_KEY = "mistudio.dashboard_pass"


class OutdatedCheckpoint(FailedPrecondition):
    """A checkpoint written by another FORMAT_VERSION: its state cannot be read as this one."""


@dataclass(frozen=True, slots=True)
class Cursor:
    next_row: int
    """First row not folded into the state yet."""
    start_row: int
    stop_row: int
    batch_size: int


def save_checkpoint(path: Path, state: PassState, cursor: Cursor) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.tensors().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "config": _config_to_json(state.config),
        "seq_len": state.seq_len,
        "token_count": state.token_count,
        "cursor": asdict(cursor),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device) -> tuple[PassState, Cursor]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw = (f.metadata() or {}).get(_META_KEY)
        tensors = {k: f.get_tensor(k).to(device) for k in f.keys()}  # noqa: SIM118
    if raw is None:
        raise FailedPrecondition(
            f"{path} is not a dashboard pass checkpoint",
            field="checkpoint",
            fix="delete the file or point the job at its own checkpoint",
        )
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise OutdatedCheckpoint(
            f"checkpoint {path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}",
            field="checkpoint",
            fix="delete the checkpoint and restart the job",
        )
    config = _config_from_json(meta["config"])
    state = PassState.from_tensors(config, meta["seq_len"], meta["token_count"], tensors)
    return state, Cursor(**meta["cursor"])


def checkpoint_features(path: Path) -> torch.Tensor | None:
    """The features of the pass checkpointed at ``path`` (None when there is none), read
    without loading its state."""
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return f.get_tensor("features") if "features" in f.keys() else None  # noqa: SIM118


def _config_to_json(config: StateConfig) -> dict[str, Any]:
    out = asdict(config)
    out["special_ids"] = list(config.special_ids)
    return out


def _config_from_json(raw: dict[str, Any]) -> StateConfig:
    raw = dict(raw)
    raw["grid"] = FineGrid(**raw["grid"])
    raw["special_ids"] = tuple(raw["special_ids"])
    return StateConfig(**raw)

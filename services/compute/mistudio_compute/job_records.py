"""What survives a restart of the compute service: each job's request, last progress message
and checkpoint folder (the stage rates measured on this machine are ``stage_rates.RateFile``).

Layout under ``data_dir/compute``::

    jobs/<job_id>/request.binpb    the ComputeDashboardsRequest that started the job
    jobs/<job_id>/progress.binpb   the last ComputeProgress published (sequence numbers resume here)
    jobs/<job_id>/plan.json        which features the job computes and how many it reused
    jobs/<job_id>/checkpoint/      the computation's own resumable state
    jobs/<job_id>/paused           present while a client has the job paused (no auto-resume)

Every file is replaced atomically so a crash never leaves half a message behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from google.protobuf.message import DecodeError
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio_common.progress import TERMINAL_STATES

log = logging.getLogger(__name__)

_REQUEST = "request.binpb"
_PROGRESS = "progress.binpb"
_CHECKPOINT = "checkpoint"
_PLAN = "plan.json"
_PAUSED = "paused"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class StoredJob:
    job_id: str
    request: cpb.ComputeDashboardsRequest
    progress: cpb.ComputeProgress | None
    paused_by_client: bool = False


class JobRecords:
    """Per-job files under ``root`` (``data_dir/compute/jobs``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, job_id: str) -> Path:
        return self.root / job_id

    def save_request(self, job_id: str, request: cpb.ComputeDashboardsRequest) -> None:
        folder = self._dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(folder / _REQUEST, request.SerializeToString(deterministic=True))

    def save_progress(self, job_id: str, message: cpb.ComputeProgress) -> None:
        _write_atomically(self._dir(job_id) / _PROGRESS, message.SerializeToString())

    def save_plan(self, job_id: str, todo: list[int], reused: int) -> None:
        data = orjson.dumps({"features": todo, "reused": reused})
        _write_atomically(self._dir(job_id) / _PLAN, data)

    def load_plan(self, job_id: str) -> tuple[list[int], int] | None:
        try:
            data = orjson.loads((self._dir(job_id) / _PLAN).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return [int(f) for f in data["features"]], int(data["reused"])

    def checkpoint_dir(self, job_id: str) -> Path:
        return self._dir(job_id) / _CHECKPOINT

    def mark_paused(self, job_id: str, paused: bool) -> None:
        """A client-paused job waits for its resume, even across restarts of the service."""
        marker = self._dir(job_id) / _PAUSED
        if paused:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def drop_checkpoint(self, job_id: str) -> None:
        """A finished job cannot resume, so its checkpoint is only disk use."""
        shutil.rmtree(self.checkpoint_dir(job_id), ignore_errors=True)

    def finished(self, job_id: str) -> bool:
        """Whether the job's last recorded progress is terminal (its folder may then go)."""
        try:
            progress = cpb.ComputeProgress.FromString((self._dir(job_id) / _PROGRESS).read_bytes())
        except (OSError, DecodeError):
            return False
        return progress.progress.state in TERMINAL_STATES

    def load_all(self) -> Iterator[StoredJob]:
        """Every job with a readable request; unreadable folders are logged and skipped."""
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                request = cpb.ComputeDashboardsRequest.FromString((folder / _REQUEST).read_bytes())
                progress_path = folder / _PROGRESS
                progress = (
                    cpb.ComputeProgress.FromString(progress_path.read_bytes())
                    if progress_path.exists()
                    else None
                )
            except (OSError, DecodeError) as error:
                log.warning(
                    "skipping unreadable job folder",
                    extra={"path": str(folder), "error": str(error)},
                )
                continue
            yield StoredJob(folder.name, request, progress, (folder / _PAUSED).exists())

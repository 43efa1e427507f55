"""What survives a restart of the compute service: each job's request, last progress message,
typed checkpoint and checkpoint folder (the job engine's store). The stage rates measured on
this machine are ``stage_rates.RateFile``.

Layout under ``data_dir/compute``::

    jobs/<job_id>/request.binpb    the ComputeDashboardsRequest that started the job (filled in)
    jobs/<job_id>/progress.binpb   the last ComputeProgress stored (its state is the job's)
    jobs/<job_id>/resume.binpb     the ComputationCheckpoint: which features the job computes
    jobs/<job_id>/checkpoint/      the computation's own resumable arrays
    jobs/<job_id>.cancelled        a tombstone: a cancel of this id came before any start

Every file is replaced atomically so a crash never leaves half a message behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_job_pb2 as jpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio_common.errors import NotFound
from mistudio_common.jobs.store import JobRecord, JobUpdate
from mistudio_common.progress import TERMINAL_STATES

from mistudio_compute.messages import computation_request_from_pb, computation_request_to_pb
from mistudio_compute.values import ComputationRequest

log = logging.getLogger(__name__)

_REQUEST = "request.binpb"
_PROGRESS = "progress.binpb"
_RESUME = "resume.binpb"
_CHECKPOINT = "checkpoint"
_TOMBSTONE = ".cancelled"

ComputeRecord = JobRecord[jpb.ComputationCheckpoint, cpb.ComputeResult]
ComputeUpdate = JobUpdate[jpb.ComputationCheckpoint, cpb.ComputeResult]


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class JobRecords:
    """The compute jobs' JobStore: per-job files under ``root`` (``data_dir/compute/jobs``).
    One compute service owns its disk, so it needs no leases."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, job_id: str) -> Path:
        return self.root / job_id

    def _tombstone(self, job_id: str) -> Path:
        return self.root / (job_id + _TOMBSTONE)

    def add_tombstone(self, job_id: str) -> None:
        """Remembers a cancel of a computation that has no record: a start that arrives later
        (from a client that crashed while asking) must not run it. ``job_id`` must have the
        form of a computation id (it names a file)."""
        self._tombstone(job_id).touch()

    def has_tombstone(self, job_id: str) -> bool:
        return self._tombstone(job_id).exists()

    def remove_tombstone(self, job_id: str) -> None:
        """Once the cancelled computation has its record, the record says it."""
        self._tombstone(job_id).unlink(missing_ok=True)

    def create(
        self, job_id: str, request: ComputationRequest, progress: ppb.Progress
    ) -> ComputeRecord:
        folder = self._dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        stored = computation_request_to_pb(request).SerializeToString(deterministic=True)
        _write_atomically(folder / _REQUEST, stored)
        self.write(job_id, JobUpdate(progress.state, progress, jpb.ComputationCheckpoint()))
        return self.load(job_id)

    def request(self, job_id: str) -> ComputationRequest:
        stored = (self._dir(job_id) / _REQUEST).read_bytes()
        return computation_request_from_pb(cpb.ComputeDashboardsRequest.FromString(stored))

    def load(self, job_id: str) -> ComputeRecord:
        folder = self._dir(job_id)
        try:
            stored = cpb.ComputeProgress.FromString((folder / _PROGRESS).read_bytes())
            resume = folder / _RESUME
            checkpoint = jpb.ComputationCheckpoint.FromString(
                resume.read_bytes() if resume.exists() else b""
            )
        except (OSError, DecodeError) as error:
            raise NotFound(
                f"no computation with job id {job_id!r}",
                resource_type="mistudio.compute.v1.Computation",
                resource_name=job_id,
                fix="use the job_id from the first ComputeDashboards message",
            ) from error
        progress = stored.progress
        return JobRecord(
            job_id=job_id,
            state=progress.state,
            progress=progress,
            checkpoint=checkpoint,
            outcome=stored.result if stored.HasField("result") else None,
            started=progress.state != ppb.JOB_STATE_QUEUED or progress.sequence > 1,
        )

    def write(self, job_id: str, update: ComputeUpdate) -> None:
        folder = self._dir(job_id)
        if update.checkpoint is not None:
            data = update.checkpoint.SerializeToString(deterministic=True)
            _write_atomically(folder / _RESUME, data)
        message = cpb.ComputeProgress(progress=update.progress, result=update.outcome)
        message.progress.state = update.state
        _write_atomically(folder / _PROGRESS, message.SerializeToString())

    def unfinished(self) -> Iterator[ComputeRecord]:
        """Queued or running jobs with readable records; unreadable folders are logged and
        skipped."""
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                record = self.load(folder.name)
                self.request(folder.name)
            except (OSError, DecodeError, NotFound) as error:
                log.warning(
                    "skipping unreadable job folder",
                    extra={"path": str(folder), "error": str(error)},
                )
                continue
            if record.state in (ppb.JOB_STATE_QUEUED, ppb.JOB_STATE_RUNNING):
                yield record

    def checkpoint_dir(self, job_id: str) -> Path:
        return self._dir(job_id) / _CHECKPOINT

    def drop_checkpoint(self, job_id: str) -> None:
        """A finished job cannot resume, so its checkpoint is only disk use."""
        shutil.rmtree(self.checkpoint_dir(job_id), ignore_errors=True)

    def ended_before(self, cutoff: float) -> Iterator[str]:
        """Jobs whose last record is an end state written before ``cutoff`` (epoch seconds),
        and tombstones written before it (of ids that never got a record)."""
        for path in sorted(self.root.iterdir()):
            try:
                if path.is_dir():
                    ended = self.load(path.name).state in TERMINAL_STATES
                    if ended and (path / _PROGRESS).stat().st_mtime < cutoff:
                        yield path.name
                elif path.name.endswith(_TOMBSTONE):
                    job_id = path.name.removesuffix(_TOMBSTONE)
                    if not self._dir(job_id).exists() and path.stat().st_mtime < cutoff:
                        yield job_id
            except (OSError, NotFound):
                continue  # unreadable or removed meanwhile: nothing to judge its age by

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self._dir(job_id), ignore_errors=True)
        self.remove_tombstone(job_id)

"""Getting a finished archive out: a presigned link, or the bytes streamed from an offset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.errors import FailedPrecondition, InvalidArgument

from mistudio_export.object_store import ObjectStore, PresignedUrl
from mistudio_export.peers import ExportJobRecord, JobLookup

DEFAULT_EXPIRY_SECONDS = 3600
MIN_EXPIRY_SECONDS = 60
MAX_EXPIRY_SECONDS = 604800
CHUNK_BYTES = 1024 * 1024


def require_job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id is empty", field="job_id", fix="pass an export's job_id")
    return job_id


def finished_job(store: JobLookup, job_id: str) -> ExportJobRecord:
    """The job, which must have succeeded and published an archive."""
    job = store.get_job(require_job_id(job_id))
    if job.state != ppb.JOB_STATE_SUCCEEDED or not job.output_uri:
        state = ppb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        raise FailedPrecondition(
            f"export {job_id} is {state}; it has no archive yet",
            violations=[("job_id", "wait for the export to succeed (WatchExport)")],
            field="job_id",
            fix="wait for the export to succeed, or resume it if it failed",
        )
    return job


def fetch_to_file(objects: ObjectStore, key: str, path: Path) -> Path:
    """Copies an object to a local file (written under a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with objects.get_range(key, chunk_size=CHUNK_BYTES) as chunks, open(partial, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    partial.replace(path)
    return path


@dataclass(frozen=True, slots=True)
class ArchiveChunk:
    """A piece of a finished archive: its bytes and where they start in it."""

    data: bytes
    offset: int
    total_size: int


def download_url(
    store: JobLookup, objects: ObjectStore, job_id: str, expiry_seconds: int
) -> PresignedUrl:
    """A link to the finished archive valid for ``expiry_seconds`` (0: one hour)."""
    expiry = expiry_seconds or DEFAULT_EXPIRY_SECONDS
    if not MIN_EXPIRY_SECONDS <= expiry <= MAX_EXPIRY_SECONDS:
        raise InvalidArgument(
            f"expiry_seconds {expiry} is outside {MIN_EXPIRY_SECONDS}..{MAX_EXPIRY_SECONDS}",
            field="expiry_seconds",
            fix="choose between one minute and seven days, or 0 for one hour",
        )
    job = finished_job(store, job_id)
    return objects.presigned_get_url(job.output_uri, expiry)


def download_chunks(
    store: JobLookup, objects: ObjectStore, job_id: str, offset: int
) -> Iterator[ArchiveChunk]:
    """The archive from ``offset`` on, in chunks that each say where they start."""
    job = finished_job(store, job_id)
    total = objects.stat(job.output_uri).size
    if not 0 <= offset <= total:
        raise InvalidArgument(
            f"offset {offset} is outside the archive's {total} bytes",
            field="offset",
            fix=f"resume from an offset between 0 and {total}",
        )
    if offset == total:
        yield ArchiveChunk(b"", offset, total)
        return
    with objects.get_range(job.output_uri, offset, chunk_size=CHUNK_BYTES) as chunks:
        for chunk in chunks:
            yield ArchiveChunk(chunk, offset, total)
            offset += len(chunk)

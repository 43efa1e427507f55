"""Proof that a refused request left nothing behind: files, store records and archives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mistudio.store.v1 import store_service_pb2 as spb

from tests.export.service.stack import Stack

_DATABASE_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal")
"""SQLite files change on reads too; the records themselves are compared through the store."""
_HEALTH_PROBE_PARTS = (".tmp", "health")
"""The export's health check writes and removes a probe object (and its temporary file) in the
archive store on every check, whatever the requests; an archive's own temporary files are
covered by the job and archive records compared through the store."""


def _written_by_health_checks(parts: tuple[str, ...]) -> bool:
    return any(part in _HEALTH_PROBE_PARTS for part in parts)


@dataclass(frozen=True)
class Snapshot:
    files: dict[str, tuple[int, int]]
    """Relative path -> (size, mtime_ns) of every file under the work folder."""
    jobs: list[str]
    saes: list[str]


def snapshot(stack: Stack, folder: Path) -> Snapshot:
    files = {
        str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if not path.is_dir()
        and not path.name.endswith(_DATABASE_SUFFIXES)
        and not _written_by_health_checks(path.relative_to(folder).parts)
    }
    jobs = stack.records.ListExportJobs(spb.ListExportJobsRequest(page_size=1000)).jobs
    saes = stack.records.ListSaes(spb.ListSaesRequest(page_size=1000)).saes
    return Snapshot(
        files=files,
        jobs=sorted(f"{job.job_id}:{job.state}:{job.output_uri}" for job in jobs),
        saes=sorted(f"{sae.sae_id}:{sae.weights_uri}" for sae in saes),
    )


def assert_unchanged(stack: Stack, folder: Path, before: Snapshot) -> None:
    after = snapshot(stack, folder)
    assert after.jobs == before.jobs, "a job was created or changed"
    assert after.saes == before.saes, "an SAE record was created or changed"
    assert after.files == before.files, "files were written, changed or removed"

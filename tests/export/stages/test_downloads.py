"""Getting a finished archive out, against in-memory peers: chunks that say where they start, a
link that expires as asked, and no archive for a job that has not succeeded."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.errors import FailedPrecondition, InvalidArgument
from mistudio_export.downloads import download_chunks, download_url
from mistudio_export.peers import SaeRecord

from tests.export.stages.doubles import MemoryObjects, MemoryStore, job_record

ARCHIVE = bytes(range(256)) * 10


def peers(tmp_path: Path, state: ppb.JobState.ValueType) -> tuple[MemoryStore, MemoryObjects]:
    store, objects = MemoryStore(SaeRecord(sae_id="tiny"), []), MemoryObjects()
    (tmp_path / "a.zip").write_bytes(ARCHIVE)
    objects.put_file("exports/a.zip", tmp_path / "a.zip")
    store.jobs["a"] = replace(job_record("a", state=state), output_uri="exports/a.zip")
    return store, objects


def test_chunks_from_an_offset_cover_the_rest_of_the_archive(tmp_path: Path) -> None:
    store, objects = peers(tmp_path, ppb.JOB_STATE_SUCCEEDED)
    pieces = list(download_chunks(store, objects, "a", 1000))
    assert b"".join(p.data for p in pieces) == ARCHIVE[1000:]
    assert pieces[0].offset == 1000 and {p.total_size for p in pieces} == {len(ARCHIVE)}


def test_an_offset_at_the_end_gives_one_empty_chunk_and_past_it_names_offset(
    tmp_path: Path,
) -> None:
    store, objects = peers(tmp_path, ppb.JOB_STATE_SUCCEEDED)
    [end] = download_chunks(store, objects, "a", len(ARCHIVE))
    assert (end.data, end.offset) == (b"", len(ARCHIVE))
    with pytest.raises(InvalidArgument) as err:
        list(download_chunks(store, objects, "a", len(ARCHIVE) + 1))
    assert err.value.field == "offset"


def test_a_link_expires_when_asked_and_an_unfinished_job_has_none(tmp_path: Path) -> None:
    store, objects = peers(tmp_path, ppb.JOB_STATE_SUCCEEDED)
    link = download_url(store, objects, "a", 120)
    assert link.expires_at <= datetime.now(UTC) + timedelta(seconds=120)
    with pytest.raises(InvalidArgument):
        download_url(store, objects, "a", 10)
    running, _ = peers(tmp_path, ppb.JOB_STATE_RUNNING)
    with pytest.raises(FailedPrecondition):
        download_url(running, objects, "a", 0)

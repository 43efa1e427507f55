"""Exports whose compute runs its pass on a Ray cluster: the archive is the unsharded one, byte for
byte, at any shard count, after a shard's worker is killed, and a cancelled export leaves no shard
running. Each export runs on a fresh stack (its own store, so nothing is reused from a cache) whose
store clock is pinned, so the SAE's creation date in the README is the same in every archive."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb

from tests.export.service.stack import (
    Stack,
    export_config,
    register_sae,
    run_to_end,
    start_stack,
    token_source,
    wait_for,
    write_sae_folder,
    write_tokens,
)
from tests.ray_cluster import local_ray_cluster

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

BATCH_ROWS = 4
"""32 rows in 8 batches: room for 7 shards (shards are cut between batches)."""
SHARD_TASK = "ray::_run_shard"
"""The process title Ray gives a worker while it runs a shard."""


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    with local_ray_cluster():
        yield


@pytest.fixture(scope="module", autouse=True)
def pinned_store_clock() -> Iterator[None]:
    from mistudio_store import convert

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convert, "now", lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tpb.TokenSource]:
    folder = tmp_path_factory.mktemp("ray-export")
    return write_sae_folder(folder / "sae"), token_source(write_tokens(folder / "t.npy", rows=32))


def export(
    data_dir: Path, inputs: tuple[Path, tpb.TokenSource], **ray_settings: object
) -> tuple[Stack, Iterator[epb.ExportProgress]]:
    """A fresh stack (Ray settings, if any, for its compute) and the stream of one export."""
    sae_folder, tokens = inputs
    stack = start_stack(data_dir, default_batch_rows=BATCH_ROWS, **ray_settings)
    sae_id = register_sae(stack, "tiny-sae", str(sae_folder)).sae_id
    config = export_config(tokens, compression=epb.Compression(zip_deflate=True))
    request = epb.StartExportRequest(request_id="one", sae_id=sae_id, config=config)
    return stack, stack.exports.StartExport(request)


def archive_of(data_dir: Path, inputs: tuple[Path, tpb.TokenSource], **ray: object) -> bytes:
    stack, stream = export(data_dir, inputs, **ray)
    try:
        last = run_to_end(stream)[-1]
        assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
        download = epb.DownloadExportRequest(job_id=last.progress.job_id)
        return b"".join(m.chunk for m in stack.exports.DownloadExport(download))
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory: pytest.TempPathFactory, inputs) -> bytes:
    return archive_of(tmp_path_factory.mktemp("local") / "data", inputs)


@pytest.mark.parametrize("shards", [1, 2, 7])
def test_the_archive_is_byte_identical_at_any_shard_count(
    shards: int, tmp_path: Path, inputs, unsharded: bytes
) -> None:
    got = archive_of(tmp_path / "data", inputs, ray_address="auto", ray_shards=shards)
    assert got == unsharded


def test_a_shard_worker_killed_mid_shard_still_gives_the_identical_archive(
    tmp_path: Path, inputs, unsharded: bytes
) -> None:
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(kill_first_shard_worker()))
    killer.start()
    got = archive_of(tmp_path / "data", inputs, ray_address="auto", ray_shards=2)
    killer.join()
    assert killed, "no shard worker was seen running"
    assert got == unsharded


def test_cancelling_an_export_cancels_its_ray_tasks(tmp_path: Path, inputs) -> None:
    stack, stream = export(
        tmp_path / "data", inputs, ray_address="auto", ray_shards=7, ray_task_retries=0
    )
    try:
        job_id = wait_for(stream, lambda m: m.progress.job_id).progress.job_id
        assert wait_until(lambda: bool(shard_workers())), "no shard started"
        stack.exports.CancelExport(epb.CancelExportRequest(job_id=job_id))
        assert run_to_end(stream)[-1].progress.state == ppb.JOB_STATE_CANCELLED
        assert wait_until(lambda: not shard_workers()), f"still running: {shard_workers()}"
    finally:
        stack.stop()


def kill_first_shard_worker() -> list[int]:
    """SIGKILLs the first worker seen running a shard of this test's cluster."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for pid in shard_workers():
            os.kill(pid, signal.SIGKILL)
            return [pid]
        time.sleep(0.01)
    return []


def shard_workers() -> list[int]:
    """Processes running a shard task that descend from this test process (the local cluster's
    raylet is its child), so other clusters on the machine are never touched."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(SHARD_TASK) and descends_from_me(int(entry.name)):
            found.append(int(entry.name))
    return found


def descends_from_me(pid: int) -> bool:
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def wait_until(condition, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()

"""Exports whose compute runs its pass on a Ray cluster: the archive is the unsharded one, byte for
byte, at any shard count, after a shard's worker is killed, and a cancelled export leaves no shard
running. The archive rounds its floats, so the dashboards the compute cached in the store are
compared too: there every float is the computed double, bit for bit. Each export runs on a fresh
stack (its own store, so nothing is reused from a cache) whose store clock is pinned, so the SAE's
creation date in the README is the same in every archive."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import sqlite3
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf import json_format
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb

from tests.export.service.stack import (
    D_SAE,
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


@dataclass(frozen=True)
class Outcome:
    archive: bytes
    dashboards: list[dpb.FeatureDashboard]
    """What the compute cached in the store for the export, by feature index."""


def outcome_of(data_dir: Path, inputs: tuple[Path, tpb.TokenSource], **ray: object) -> Outcome:
    stack, stream = export(data_dir, inputs, **ray)
    try:
        last = run_to_end(stream)[-1]
        assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
        download = epb.DownloadExportRequest(job_id=last.progress.job_id)
        archive = b"".join(m.chunk for m in stack.exports.DownloadExport(download))
        return Outcome(archive, cached_dashboards(stack))
    finally:
        stack.stop()


def cached_dashboards(stack: Stack) -> list[dpb.FeatureDashboard]:
    """Every dashboard of the stack's one cached parameter set, through GetDashboards (the
    parameters are read from the store's database, where the cache files them)."""
    with sqlite3.connect(stack.data_dir / "store.db") as db:
        ((sae_id, document),) = db.execute(
            "SELECT DISTINCT saes.sae_id, dashboards.params FROM dashboards"
            " JOIN saes ON saes.id = dashboards.sae_pk"
        ).fetchall()
    params = json_format.ParseDict(json.loads(document), dpb.DashboardParams())
    request = spb.GetDashboardsRequest(sae_id=sae_id, params=params)
    return [
        dpb.FeatureDashboard.FromString(d.data)
        for m in stack.records.GetDashboards(request)
        for d in m.serialized_dashboards
    ]


def float_bits(dashboards: list[dpb.FeatureDashboard]) -> list[dict[str, str]]:
    """The floats that sums make (statistics and token aggregates), exactly, as hex."""
    out = []
    for d in dashboards:
        fields = {f"{d.feature_index}.{name}": getattr(d.statistics, name).hex() for name in
                  ("mean_activation", "std_activation", "activation_frequency")}  # fmt: skip
        for t in d.top_tokens:
            fields[f"{d.feature_index}.top_token.{t.token_id}.mean"] = t.mean_activation.hex()
            fields[f"{d.feature_index}.top_token.{t.token_id}.total"] = t.total_activation.hex()
        out.append(fields)
    return out


def assert_identical(got: Outcome, expected: Outcome, keep: Path) -> None:
    """Archives that differ are kept in ``keep`` and the failure says how they differ."""
    assert len(got.dashboards) == len(expected.dashboards) == D_SAE
    assert float_bits(got.dashboards) == float_bits(expected.dashboards)
    wire = [d.SerializeToString(deterministic=True) for d in got.dashboards]
    assert wire == [d.SerializeToString(deterministic=True) for d in expected.dashboards]
    if got.archive != expected.archive:
        (keep / "got.zip").write_bytes(got.archive)
        (keep / "expected.zip").write_bytes(expected.archive)
        differences = archive_differences(got.archive, expected.archive)
        pytest.fail(f"the archives differ (both kept in {keep}):\n" + "\n".join(differences))


HEADER_FIELDS = ("compress_type", "CRC", "file_size", "compress_size", "date_time", "flag_bits",
                 "external_attr", "internal_attr", "create_system", "create_version",
                 "extract_version", "extra", "comment")  # fmt: skip
"""The ZipInfo facts (central directory) that ``archive_differences`` compares per member; not
the offset, which every member after one of another size has different."""


def archive_differences(got: bytes, expected: bytes) -> list[str]:
    """What differs between two ZIPs, so a mismatch says where it comes from: the members'
    names and order, each shared member's header facts and content (where it first differs),
    and, when all of those agree, the first differing byte of the ZIPs themselves."""
    with zipfile.ZipFile(io.BytesIO(got)) as a, zipfile.ZipFile(io.BytesIO(expected)) as b:
        names_a, names_b = a.namelist(), b.namelist()
        out = [f"only in got: {n}" for n in names_a if n not in names_b]
        out += [f"only in expected: {n}" for n in names_b if n not in names_a]
        shared = [n for n in names_a if n in names_b]
        if shared != [n for n in names_b if n in names_a]:
            out.append(f"member order differs: got {names_a}, expected {names_b}")
        for name in shared:
            x, y = a.getinfo(name), b.getinfo(name)
            out += [f"{name}: {f} {getattr(x, f)!r} != {getattr(y, f)!r}"
                    for f in HEADER_FIELDS if getattr(x, f) != getattr(y, f)]  # fmt: skip
            out += content_difference(name, a.read(name), b.read(name))
        if not out:
            at = first_difference(got, expected)
            out.append(f"members agree; the ZIPs differ at byte {at} ({where(a, at)})")
    return out


def where(zf: zipfile.ZipFile, at: int) -> str:
    """The part of the ZIP that byte ``at`` lies in: a member's header or data, or the end."""
    if at >= zf.start_dir:
        return "the central directory"
    return max((i.header_offset, i.filename) for i in zf.infolist() if i.header_offset <= at)[1]


def content_difference(name: str, got: bytes, expected: bytes) -> list[str]:
    """Where a member's bytes (a .gz member's data) first differ, with the text around it."""
    if got == expected:
        return []
    if name.endswith(".gz"):
        got, expected = gzip.decompress(got), gzip.decompress(expected)
        if got == expected:
            return [f"{name}: the same data, gzipped differently"]
    at = first_difference(got, expected)
    around = slice(max(0, at - 80), at + 80)
    return [f"{name}: {len(got)}/{len(expected)} bytes, first differ at {at}: "
            f"got {got[around]!r}, expected {expected[around]!r}"]  # fmt: skip


def first_difference(a: bytes, b: bytes) -> int:
    return next(
        (i for i, (p, q) in enumerate(zip(a, b, strict=False)) if p != q), min(len(a), len(b))
    )


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory: pytest.TempPathFactory, inputs) -> Outcome:
    return outcome_of(tmp_path_factory.mktemp("local") / "data", inputs)


@pytest.mark.parametrize("shards", [1, 2, 7])
def test_the_archive_and_dashboards_are_identical_at_any_shard_count(
    shards: int, tmp_path: Path, inputs, unsharded: Outcome
) -> None:
    got = outcome_of(tmp_path / "data", inputs, ray_address="auto", ray_shards=shards)
    assert_identical(got, unsharded, tmp_path)


def test_a_shard_worker_killed_mid_shard_still_gives_the_identical_archive(
    tmp_path: Path, inputs, unsharded: Outcome
) -> None:
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(kill_first_shard_worker()))
    killer.start()
    got = outcome_of(tmp_path / "data", inputs, ray_address="auto", ray_shards=2)
    killer.join()
    assert killed, "no shard worker was seen running"
    assert_identical(got, unsharded, tmp_path)


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

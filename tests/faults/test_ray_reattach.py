"""A compute service running a computation as Ray shards is killed -9 mid-pass and started again
on the same Ray cluster: it re-attaches to the shards that had finished, computes only the
others, and the export ends with the archive of an uninterrupted run. Without a state bucket the
restarted service needs the same checkpoint folder; with one, any compute instance will do, even
one with an empty data directory (a replaced pod)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio_compute.dashboards import distributed

from tests.export.service.stack import STORIES_DIR, token_source, write_tokens
from tests.faults.harness import FaultStack, replace_compute, start_fault_stack
from tests.faults.test_faults import register_sae, start
from tests.moto_s3 import ACCESS_KEY, SECRET_KEY, bucket_url
from tests.ray_cluster import local_ray_cluster

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
"""Each test runs two exports on a Ray cluster with a kill and a restart between: past the
default 300 s on a loaded two-core machine."""

SHARDS = 4
"""64 rows in batches of 4: four shards of four batches, one at a time, so a kill falls between
finished and unfinished shards."""
STATE_BUCKET, STATE_PREFIX = "ray-states", "computations"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    folder = tmp_path_factory.mktemp("ray-faults")
    with local_ray_cluster():
        ray_settings = {
            "MISTUDIO_COMPUTE_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "MISTUDIO_COMPUTE_RAY_SHARDS": str(SHARDS),
            "MISTUDIO_COMPUTE_RAY_MAX_SHARDS_IN_FLIGHT": "1",
        }
        running = start_fault_stack(folder, [folder.parent, STORIES_DIR], ray_settings)
        try:
            register_sae(running, folder)
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tpb.TokenSource:
    folder = tmp_path_factory.mktemp("ray-fault-tokens")
    return token_source(write_tokens(folder / "tokens.npy", rows=64, seed=11))


@pytest.fixture(scope="module")
def uninterrupted(stack: FaultStack, tokens: tpb.TokenSource) -> str:
    """The archive's SHA-256 when nothing goes wrong."""
    view = stack.finished(next(start(stack, tokens)).progress.job_id)
    assert view.progress.state == ppb.JOB_STATE_SUCCEEDED, view.progress.error
    return view.result.archive_sha256


def test_a_restarted_compute_reattaches_to_finished_shards_and_ends_with_the_same_archive(
    stack: FaultStack, tokens: tpb.TokenSource, uninterrupted: str
) -> None:
    job_id = next(start(stack, tokens)).progress.job_id
    assert wait_until(lambda: bool(saved_shards(stack))), "no shard finished"
    stack.compute.kill()
    finished_before = saved_shards(stack)
    assert 0 < len(finished_before) < SHARDS, finished_before
    log_offset = stack.compute.log.stat().st_size
    stack.compute.start()

    view = stack.finished(job_id)
    assert view.progress.state == ppb.JOB_STATE_SUCCEEDED, view.progress.error
    assert view.result.archive_sha256 == uninterrupted
    after = shard_logs(stack.compute.log, log_offset)
    assert [e["reattached_shards"] for e in after if "reattached_shards" in e] == [
        len(finished_before)
    ]
    computed = {
        f"rows-{a}-{b}.safetensors"
        for a, b in (e["shard_rows"] for e in after if "shard_rows" in e)
    }
    assert len(computed) == SHARDS - len(finished_before)
    assert computed.isdisjoint(finished_before), "a finished shard was computed again"


def test_another_compute_with_an_empty_disk_reattaches_to_shards_kept_in_the_state_bucket(
    stack: FaultStack, tokens: tpb.TokenSource, uninterrupted: str, tmp_path: Path
) -> None:
    state = {
        "MISTUDIO_COMPUTE_RAY_STATE_URL": bucket_url(f"127.0.0.1:{stack.s3.port}", STATE_BUCKET),
        "MISTUDIO_COMPUTE_RAY_STATE_PREFIX": STATE_PREFIX,
        "MISTUDIO_COMPUTE_RAY_STATE_ACCESS_KEY": ACCESS_KEY,
        "MISTUDIO_COMPUTE_RAY_STATE_SECRET_KEY": SECRET_KEY,
    }
    replace_compute(stack, tmp_path / "compute-a", state)
    job_id = next(start(stack, tokens)).progress.job_id
    assert wait_until(lambda: bool(kept_shards(stack))), "no shard finished"
    stack.compute.kill()
    (finished_before,) = kept_shards(stack).values()
    assert 0 < len(finished_before) < SHARDS, finished_before

    replace_compute(stack, tmp_path / "compute-b", state)
    view = stack.finished(job_id)
    assert view.progress.state == ppb.JOB_STATE_SUCCEEDED, view.progress.error
    assert view.result.archive_sha256 == uninterrupted
    logs = shard_logs(stack.compute.log, 0)
    (reattached,) = [e["reattached_shards"] for e in logs if "reattached_shards" in e]
    computed = [f"rows-{a}-{b}.safetensors" for a, b in (e["shard_rows"] for e in logs
                                                        if "shard_rows" in e)]  # fmt: skip
    assert reattached >= len(finished_before) and len(computed) == SHARDS - reattached, computed
    assert finished_before.isdisjoint(computed), "a finished shard was computed again"
    assert not list((tmp_path / "compute-b").rglob("*.safetensors")), "shards saved on disk"
    assert kept_shards(stack) == {}, "the ended computation's shard states are still kept"


def kept_shards(stack: FaultStack) -> dict[str, set[str]]:
    """Finished token shards in the state bucket, by computation id."""
    client = Minio(f"127.0.0.1:{stack.s3.port}", ACCESS_KEY, SECRET_KEY, secure=False)
    if not client.bucket_exists(STATE_BUCKET):
        return {}
    kept: dict[str, set[str]] = {}
    for o in client.list_objects(STATE_BUCKET, prefix=f"{STATE_PREFIX}/", recursive=True):
        computation, folder, name = str(o.object_name).split("/")[1:]
        assert folder == "shards", o.object_name
        kept.setdefault(computation, set()).add(name)
    return kept


def saved_shards(stack: FaultStack) -> set[str]:
    """Finished token shards saved in the compute's checkpoint folders."""
    folder = Path(stack.compute.env["MISTUDIO_COMPUTE_DATA_DIR"])
    return {p.name for p in folder.rglob("*.shards/rows-*.safetensors")}


def shard_logs(log: Path, offset: int) -> list[dict[str, object]]:
    """The compute's log entries about Ray shards written after ``offset``."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # Ray's own output
        if isinstance(entry, dict) and entry.get("logger") == distributed.__name__:
            entries.append(entry)
    return entries


def wait_until(condition, timeout_s: float = 240) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()

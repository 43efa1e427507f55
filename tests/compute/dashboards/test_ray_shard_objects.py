"""Ray shards whose states are kept in a state bucket (a moto S3 server) rather than on the
driver's disk: each shard task writes its own state there, and a pass run again from another
replica's empty disk re-attaches to them and computes only the rest."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from minio import Minio
from mistudio_common.errors import Cancelled
from mistudio_common.s3_address import parse_s3_url
from mistudio_compute.dashboards import Stage
from mistudio_compute.shard_objects import StateBucket

from tests.compute.dashboards.test_pass_lifecycle import BATCH
from tests.compute.dashboards.test_ray_shards import (  # noqa: F401 (fixtures)
    CountingReads,
    cluster,
    inputs,
    reference,
    sharded,
)
from tests.moto_s3 import ACCESS_KEY, SECRET_KEY, bucket_url, moto_server

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

BUCKET, PREFIX = "ray-states", "computations"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as address:
        yield address


def state_bucket(endpoint: str) -> StateBucket:
    """The state bucket as a compute replica's settings describe it."""
    return StateBucket(parse_s3_url(bucket_url(endpoint, BUCKET)), PREFIX, ACCESS_KEY, SECRET_KEY)


def kept(endpoint: str) -> list[str]:
    """Every key in the state bucket, read with a client of the test's own."""
    client = Minio(endpoint, ACCESS_KEY, SECRET_KEY, secure=False)
    if not client.bucket_exists(BUCKET):
        return []
    return sorted(str(o.object_name) for o in client.list_objects(BUCKET, recursive=True))


def test_another_replica_reattaches_to_shards_the_tasks_kept_in_the_bucket(
    tmp_path,
    endpoint,
    inputs,  # noqa: F811
    model,
    relu_sae,
    tokens,
    reference,  # noqa: F811
):
    reads, reads_again, cancel = tmp_path / "reads", tmp_path / "reads-again", threading.Event()
    reads.mkdir()
    reads_again.mkdir()
    shard_tokens = 2 * BATCH * tokens.shape[1]  # 8 batches in 4 shards of 2

    def stop_after_two_shards(stage: Stage, done: int, total: int, message: str) -> None:
        if done >= 2 * shard_tokens:
            cancel.set()

    with pytest.raises(Cancelled):
        sharded(inputs, CountingReads(model, relu_sae, tokens, reads), 4,
                saved=state_bucket(endpoint).computation("cmp-one"),
                progress=stop_after_two_shards, cancel=cancel)  # fmt: skip
    names = kept(endpoint)
    assert len(names) >= 2, names
    assert set(names) <= {
        f"{PREFIX}/cmp-one/shards/rows-{a}-{a + 2 * BATCH}.safetensors"
        for a in range(0, 4 * 2 * BATCH, 2 * BATCH)
    }

    first_report: list[int] = []
    again = state_bucket(endpoint).computation("cmp-one")  # nothing shared but the bucket
    got = sharded(inputs, CountingReads(model, relu_sae, tokens, reads_again), 4, saved=again,
                  progress=lambda s, done, t, m: first_report.append(done))  # fmt: skip
    assert got == reference
    assert first_report[0] == len(names) * shard_tokens  # re-attached before any task ran
    assert len(list(reads_again.iterdir())) == (4 - len(names)) * 2  # the other shards' batches
    assert len(kept(endpoint)) == 4

    again.clear()
    assert kept(endpoint) == []


def test_a_computation_reattaches_only_to_its_own_shards(
    tmp_path,
    endpoint,
    inputs,  # noqa: F811
    model,
    relu_sae,
    tokens,
    reference,  # noqa: F811
):
    first_reads, reads = tmp_path / "first-reads", tmp_path / "reads"
    first_reads.mkdir()
    reads.mkdir()
    bucket = state_bucket(endpoint)
    sharded(inputs, CountingReads(model, relu_sae, tokens, first_reads), 2,
            saved=bucket.computation("cmp-first"))  # fmt: skip
    got = sharded(inputs, CountingReads(model, relu_sae, tokens, reads), 2,
                  saved=bucket.computation("cmp-second"))  # fmt: skip
    assert got == reference
    assert len(list(reads.iterdir())) == 8  # every batch: nothing of cmp-first was used
    bucket.computation("cmp-first").clear()
    assert {k.split("/")[1] for k in kept(endpoint)} == {"cmp-second"}
    bucket.computation("cmp-second").clear()

"""Shard states a computation kept in the state bucket (``MISTUDIO_COMPUTE_RAY_STATE_URL``)
go with it: when it ends, and, if the bucket could not be reached then, when retention removes
the computation."""

from __future__ import annotations

import io
from pathlib import Path

from mistudio_compute.config import ComputeSettings
from mistudio_compute.jobs import ComputeJobManager

from tests.moto_s3 import ACCESS_KEY, SECRET_KEY, bucket_url, moto_server


def test_retention_removes_the_shard_states_a_computation_left_in_the_state_bucket(
    tmp_path: Path,
) -> None:
    with moto_server() as endpoint:
        settings = ComputeSettings(
            data_dir=tmp_path,
            ray_address="ray://head:10001",
            ray_state_url=bucket_url(endpoint, "states"),
            ray_state_access_key=ACCESS_KEY,
            ray_state_secret_key=SECRET_KEY,  # type: ignore[arg-type]
        )
        bucket = settings.ray_state_bucket()
        assert bucket is not None
        client = bucket.client()
        client.make_bucket("states")
        for job in ("cmp-expired", "cmp-kept"):
            key = bucket.key(job, "shards", "rows-0-8.safetensors")
            client.put_object("states", key, io.BytesIO(b"state"), 5)
        manager = ComputeJobManager(settings, preparer=None, store=None)  # type: ignore[arg-type]
        try:
            manager.expire("cmp-expired")
        finally:
            manager.shutdown(wait_seconds=0.1)
        left = [o.object_name for o in client.list_objects("states", recursive=True)]
        assert left == ["computations/cmp-kept/shards/rows-0-8.safetensors"]

"""Finished Ray shards' states in an S3 bucket (``MISTUDIO_COMPUTE_RAY_STATE_URL``), where every
compute replica and every Ray worker reaches them.

Each shard task writes its own state to
``<prefix>/<computation id>/shards/rows-<a>-<b>.safetensors`` (the bytes of a local shard file)
before it returns, so a computation started again, on this replica or on another with an empty
disk, re-attaches to the shards any replica finished. S3 makes a PUT appear whole, so a reader
never sees half a shard. The computation id is the job id, which follows from the request id,
so a request retried on another replica finds the same shards.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from mistudio_common.errors import Unavailable
from mistudio_common.s3_address import S3Address

from mistudio_compute.dashboards.activation_pass import PassResult
from mistudio_compute.dashboards.checkpoint import checkpoint_features
from mistudio_compute.dashboards.shard_states import read_shard, shard_name, write_shard
from mistudio_compute.dashboards.state import StateConfig

_MISSING_KEY = frozenset({"NoSuchKey", "NoSuchObject"})
_SETTING = "ray_state_url"


@dataclass(frozen=True, slots=True)
class StateBucket:
    """Where computations keep their shard states, and a key that may write there. Plain data,
    so that Ray ships it to the workers with each shard task."""

    address: S3Address
    prefix: str
    access_key: str
    secret_key: str = field(repr=False)

    def computation(self, computation_id: str) -> ShardObjects:
        return ShardObjects(self, computation_id)

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), *parts) if p)

    def client(self) -> Minio:
        return Minio(
            self.address.endpoint,
            self.access_key or None,
            self.secret_key or None,
            secure=self.address.secure,
            region=self.address.region,
        )


@dataclass(frozen=True, slots=True)
class ShardObjects:
    """One computation's finished token shards in the state bucket (a ShardStore)."""

    bucket: StateBucket
    computation_id: str
    shared = True

    @property
    def folder(self) -> str:
        """The key prefix of this computation's shards."""
        return self.bucket.key(self.computation_id, "shards") + "/"

    def save(self, rows: range, result: PassResult) -> None:
        key = self.folder + shard_name(rows)
        with tempfile.TemporaryDirectory() as scratch, self._translated("write"):
            path = Path(scratch) / shard_name(rows)
            write_shard(path, rows, result)
            client = self.bucket.client()
            try:
                client.fput_object(self.bucket.address.bucket, key, str(path))
            except S3Error as error:
                if error.code != "NoSuchBucket":
                    raise
                _make_bucket(client, self.bucket.address.bucket)
                client.fput_object(self.bucket.address.bucket, key, str(path))

    def load(self, rows: range, config: StateConfig, features: torch.Tensor) -> PassResult | None:
        key = self.folder + shard_name(rows)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / shard_name(rows)
            if not self._download(key, path):
                return None
            return read_shard(path, rows, config, features, self._uri(key))

    def features(self) -> torch.Tensor | None:
        names = sorted(self._keys(self.folder))
        if not names:
            return None
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "shard.safetensors"
            return checkpoint_features(path) if self._download(names[0], path) else None

    def clear(self) -> None:
        """Removes everything kept for this computation."""
        keys = self._keys(self.bucket.key(self.computation_id) + "/")
        with self._translated("delete"):
            errors = self.bucket.client().remove_objects(
                self.bucket.address.bucket, (DeleteObject(k) for k in keys)
            )
            failed = [str(e.name) for e in errors]
        if failed:
            raise self._unavailable(f"could not delete {', '.join(failed)}")

    def __str__(self) -> str:
        return self._uri(self.folder)

    def _keys(self, prefix: str) -> list[str]:
        with self._translated("list"):
            try:
                found = self.bucket.client().list_objects(
                    self.bucket.address.bucket, prefix=prefix, recursive=True
                )
                return [o.object_name for o in found if o.object_name]
            except S3Error as error:
                if error.code == "NoSuchBucket":
                    return []
                raise

    def _download(self, key: str, path: Path) -> bool:
        """Whether ``key`` existed (and is now at ``path``)."""
        with self._translated("read"):
            try:
                self.bucket.client().fget_object(self.bucket.address.bucket, key, str(path))
            except S3Error as error:
                if error.code in _MISSING_KEY or error.code == "NoSuchBucket":
                    return False
                raise
        return True

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket.address.bucket}/{key}"

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except S3Error as error:
            raise self._unavailable(f"could not {action} shard states ({error.code})") from error
        except urllib3.exceptions.HTTPError as error:
            problem = f"could not {action} shard states ({error.__class__.__name__})"
            raise self._unavailable(problem) from error

    def _unavailable(self, problem: str) -> Unavailable:
        return Unavailable(
            f"the object store at {self.bucket.address.endpoint} {problem} in {self}",
            field=_SETTING,
            fix="check MISTUDIO_COMPUTE_RAY_STATE_URL, and that MISTUDIO_COMPUTE_RAY_STATE_"
            "ACCESS_KEY may read, write, list and delete under MISTUDIO_COMPUTE_RAY_STATE_PREFIX",
        )


def _make_bucket(client: Minio, bucket: str) -> None:
    """Creates the bucket on the first write; safe to race with another writer."""
    try:
        client.make_bucket(bucket)
    except S3Error as error:
        if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise

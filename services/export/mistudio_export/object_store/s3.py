"""Archives in an S3-protocol bucket (MinIO in the deploy stack, or AWS S3) via the minio SDK.

S3 already makes a PUT or a completed multipart upload appear all at once, and an aborted
multipart upload leaves nothing behind, so atomicity needs no extra work here. What this
adapter adds is error translation: SDK and transport errors become the project's domain
errors, each with a fix, so the gRPC layer can map them without knowing about S3.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Upload
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name
from mistudio_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    MistudioError,
    NotFound,
    Unavailable,
)
from mistudio_common.s3_address import DEFAULT_PART_SIZE

from mistudio_export.object_store.base import (
    CHUNK_SIZE,
    ChunkStream,
    ObjectInfo,
    PresignedUrl,
    ProgressCallback,
    check_expiry,
    check_key,
    check_prefix,
    check_range,
    object_not_found,
    range_past_end,
    source_file_size,
)

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's smallest allowed multipart part (all parts but the last)."""
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024

_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
_DENIED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"})
_BAD_NAME = frozenset({"InvalidBucketName", "InvalidObjectName", "KeyTooLongError"})


class S3ObjectStore:
    """An :class:`ObjectStore` over one bucket, created on first write when missing.

    ``public_endpoint`` is the host:port that people outside the deploy network use (the
    service may reach MinIO as ``minio:9000`` while a browser needs ``localhost:9000``);
    presigned links are signed for that host, because the signature covers the Host header.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = True,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallel_uploads: int = 2,
        public_endpoint: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise InvalidArgument(
                f"part_size {part_size} is outside S3's {MIN_PART_SIZE}..{MAX_PART_SIZE}",
                field="part_size",
                fix="use a part size of at least 5 MiB",
            )
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError:
            raise InvalidArgument(
                f"bucket name {bucket!r} is not valid for S3",
                field="bucket",
                fix="use 3-63 lowercase letters, digits, '.' or '-', starting with a letter/digit",
            ) from None
        self.endpoint = endpoint
        self.bucket = bucket
        self.part_size = part_size
        self.parallel_uploads = max(1, parallel_uploads)
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        http = _http_client(timeout_s, retries)
        self._client = Minio(
            endpoint,
            access_key or None,
            secret_key or None,
            secure=secure,
            region=region,
            http_client=http,
        )
        # Presigning is pure computation when the region is known, so the public client never
        # has to reach the public host from inside the deploy network.
        self._presigner = (
            Minio(
                public_endpoint,
                access_key,
                secret_key,
                secure=secure,
                region=region or "us-east-1",
                http_client=http,
            )
            if public_endpoint
            else self._client
        )

    def ensure_bucket(self) -> None:
        """Creates the bucket unless it exists; safe to race with another writer."""
        if self._bucket_ready:
            return
        with self._bucket_lock, self._translated(""):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    def put_file(
        self, key: str, path: Path, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        check_key(key)
        size = source_file_size(path)
        try:
            return self._put(key, path, size, progress)
        except NotFound:
            if self._bucket_ready:
                raise
            return self._put(key, path, size, progress)  # the bucket was lost: made again

    def _put(
        self, key: str, path: Path, size: int, progress: ProgressCallback | None
    ) -> ObjectInfo:
        self.ensure_bucket()
        with open(path, "rb") as f, self._translated(key):
            result = self._client.put_object(
                self.bucket,
                key,
                f,
                length=size,
                content_type=_content_type(key),
                part_size=self.part_size,
                num_parallel_uploads=self.parallel_uploads,
                progress=_ProgressAdapter(progress, size) if progress else None,
            )
        return ObjectInfo(key=key, size=size, etag=(result.etag or "").strip('"'))

    def get_range(
        self, key: str, offset: int = 0, length: int | None = None, *, chunk_size: int = CHUNK_SIZE
    ) -> ChunkStream:
        check_key(key)
        check_range(offset, length)
        if length == 0:  # minio reads length=0 as "to the end"
            self.stat(key)
            return ChunkStream(iter(()), lambda: None)
        with self._translated(key):
            try:
                response = self._client.get_object(self.bucket, key, offset, length or 0)
            except S3Error as exc:
                if exc.code != "InvalidRange":
                    raise
                # S3 answers 416 for offset == size; this interface reads that as empty.
                size = self.stat(key).size
                if offset == size:
                    return ChunkStream(iter(()), lambda: None)
                raise range_past_end(key, offset, size) from None

        def close() -> None:
            response.close()
            response.release_conn()

        return ChunkStream(self._streamed(key, response.stream(chunk_size)), close)

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        with self._translated(key):
            obj = self._client.stat_object(self.bucket, key)
        return ObjectInfo(key=key, size=obj.size or 0, etag=(obj.etag or "").strip('"'))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        check_key(key)
        # A missing bucket holds nothing to delete; S3 itself ignores a missing key.
        with contextlib.suppress(NotFound), self._translated(key):
            self._client.remove_object(self.bucket, key)

    def presigned_get_url(self, key: str, expiry_seconds: int) -> PresignedUrl:
        check_expiry(expiry_seconds)
        self.stat(key)  # S3 would sign a link to a missing key; fail here instead
        now = datetime.now(UTC).replace(microsecond=0)
        with self._translated(key):
            url = self._presigner.presigned_get_object(
                self.bucket, key, expires=timedelta(seconds=expiry_seconds), request_date=now
            )
        return PresignedUrl(url=url, expires_at=now + timedelta(seconds=expiry_seconds))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        return self._listed(prefix)

    def _listed(self, prefix: str) -> Iterator[ObjectInfo]:
        # No bucket yet means nothing has been stored: an empty listing, not an error.
        with contextlib.suppress(NotFound), self._translated(prefix):
            for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True):
                if obj.object_name is None or obj.is_dir:
                    continue
                etag = (obj.etag or "").strip('"')
                yield ObjectInfo(key=obj.object_name, size=obj.size or 0, etag=etag)

    def remove_unfinished(self, before: float) -> int:
        cutoff = datetime.fromtimestamp(before, UTC)
        removed = 0
        # minio has no public call for these; its own put_object aborts what it began unless
        # the process dies first, which is what is left here. No bucket: nothing was begun.
        with contextlib.suppress(NotFound), self._translated(""):
            for upload in self._unfinished():
                initiated = upload.initiated_time
                if upload.upload_id and initiated is not None and initiated < cutoff:
                    self._client._abort_multipart_upload(
                        self.bucket, upload.object_name, upload.upload_id
                    )
                    removed += 1
        return removed

    def _unfinished(self) -> Iterator[Upload]:
        key_marker, upload_marker = None, None
        while True:
            page = self._client._list_multipart_uploads(
                self.bucket, key_marker=key_marker, upload_id_marker=upload_marker
            )
            yield from page.uploads
            if not page.is_truncated:
                return
            key_marker, upload_marker = page.next_key_marker, page.next_upload_id_marker

    def _streamed(self, key: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        with self._translated(key):
            yield from chunks

    @contextmanager
    def _translated(self, key: str) -> Iterator[None]:
        """Turns minio and urllib3 errors into domain errors that name a fix."""
        try:
            yield
        except S3Error as exc:
            raise self._from_s3_error(exc, key) from exc
        except (ServerError, InvalidResponseError) as exc:
            raise Unavailable(
                f"object store at {self.endpoint} answered with an error: {exc}",
                field="object_store_url",
                fix="check that the endpoint is an S3/MinIO server and that it is healthy",
            ) from exc
        except urllib3.exceptions.HTTPError as exc:
            self._bucket_ready = False  # the server that comes back may have lost the bucket
            raise Unavailable(
                f"object store at {self.endpoint} is unreachable: {exc.__class__.__name__}",
                field="object_store_url",
                fix="start MinIO/S3, or correct host:port and secure= in "
                "MISTUDIO_EXPORT_OBJECT_STORE_URL",
            ) from exc

    def _from_s3_error(self, exc: S3Error, key: str) -> MistudioError:
        code = exc.code or ""
        if code == "NoSuchBucket":
            self._bucket_ready = False  # it was lost (an object store reset): create it again
            return NotFound(
                f"bucket {self.bucket!r} does not exist at {self.endpoint}",
                resource_type="bucket",
                resource_name=self.bucket,
                fix="store an archive first (the bucket is created on the first write)",
            )
        if code in _MISSING:
            return object_not_found(key)
        if code in _DENIED:
            return FailedPrecondition(
                f"object store at {self.endpoint} refused the credentials ({code})",
                field="s3_access_key",
                fix="set MISTUDIO_EXPORT_S3_ACCESS_KEY and MISTUDIO_EXPORT_S3_SECRET_KEY to a key "
                f"with read/write access to bucket {self.bucket!r}",
            )
        if code in _BAD_NAME:
            return InvalidArgument(
                f"object store rejected {key or self.bucket!r}: {code}: {exc.message}",
                field="key",
                fix="use lowercase bucket names and keys under 1024 bytes",
            )
        return FailedPrecondition(
            f"object store at {self.endpoint} refused the request: {code}: {exc.message}",
            fix="see the object store's logs for this error code",
        )


class _ProgressAdapter:
    """minio's progress hook (``set_meta``/``update``) reporting to a ProgressCallback."""

    def __init__(self, callback: ProgressCallback, total: int) -> None:
        self._callback = callback
        self._total = total
        self._done = 0

    def set_meta(self, object_name: str, total_length: int) -> None:
        self._total = total_length

    def update(self, length: int) -> None:
        self._done += length
        self._callback(self._done, self._total)


def _http_client(timeout_s: float, retries: int) -> urllib3.PoolManager:
    """minio's default waits 5 minutes and retries 5 times; a service should fail sooner."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )


def _content_type(key: str) -> str:
    suffix = key.rpartition(".")[2].lower()
    return {
        "zip": "application/zip",
        "json": "application/json",
        "md": "text/markdown; charset=utf-8",
    }.get(suffix, "application/octet-stream")

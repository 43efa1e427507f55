"""The one interface every archive store implements, and the value types it returns.

Export jobs only ever need to put a finished file, read it back (whole or from an offset, for
resumable downloads), and hand out a time-limited link; keeping the surface that small lets a
folder on disk and an S3 bucket be swapped by configuration alone.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol, runtime_checkable

from mistudio_common.errors import InvalidArgument, NotFound

CHUNK_SIZE = 1024 * 1024
"""Bytes per chunk when streaming; large enough for throughput, small enough to bound memory."""

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
"""S3 signature version 4 refuses links valid for longer than seven days."""

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes total) during an upload; raising from it aborts the upload."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object.

    ``etag`` is opaque and store-specific: it changes when the content changes, but an etag from
    one store kind is never comparable with another's (S3 multipart etags are not content MD5s).
    """

    key: str
    size: int
    etag: str


class PresignedUrl(NamedTuple):
    """A link anyone can GET until ``expires_at`` (UTC)."""

    url: str
    expires_at: datetime


class ChunkStream:
    """An iterator of byte chunks that owns an open resource; close it, or use it in ``with``.

    A plain generator would leak the open file or HTTP response when the caller stops before
    the first chunk, because an unstarted generator never runs its ``finally``.
    """

    def __init__(self, chunks: Iterator[bytes], close: Callable[[], None]) -> None:
        self._chunks = chunks
        self._close = close
        self._closed = False

    def __iter__(self) -> ChunkStream:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            return next(self._chunks)
        except StopIteration:
            self.close()
            raise

    def read_all(self) -> bytes:
        """Collects the remaining chunks; for small objects and tests only."""
        with self:
            return b"".join(self)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@runtime_checkable
class ObjectStore(Protocol):
    """Where finished export archives live; keys are '/'-separated relative paths."""

    @property
    def bucket(self) -> str | None:
        """The S3 bucket, where compute can read uploads; None for a folder."""
        ...

    def put_file(
        self, key: str, path: Path, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        """Stores the file under ``key``, replacing any object there; readers never see half."""
        ...

    def get_range(
        self, key: str, offset: int = 0, length: int | None = None, *, chunk_size: int = CHUNK_SIZE
    ) -> ChunkStream:
        """Streams ``length`` bytes (all remaining when None) from ``offset``."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and etag; raises NotFound when the key holds no object."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Removes the object; deleting a missing key is not an error (as in S3)."""
        ...

    def presigned_get_url(self, key: str, expiry_seconds: int) -> PresignedUrl:
        """A link that downloads the object without credentials until it expires."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""
        ...

    def remove_unfinished(self, before: float) -> int:
        """Removes uploads begun before ``before`` (epoch seconds) that never finished (a crash
        mid-write leaves them: a temporary file, an incomplete multipart upload); returns how
        many. Retention calls it with a cutoff older than any upload still under way."""
        ...


def check_key(key: str) -> str:
    """Rejects keys that could escape a folder store or mean different things to S3 and disk."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(part in ("", ".", "..") or part.startswith(".") for part in parts)
    ):
        raise InvalidArgument(
            f"object key {key!r} is not a relative '/'-separated path",
            field="key",
            fix="use keys like 'exports/<job_id>/archive.zip': no leading '/', no empty, '.'- or "
            "'..'-segments, no segment starting with '.', no backslashes",
        )
    return key


def check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise InvalidArgument(
            f"byte range offset={offset} length={length} is negative",
            field="offset",
            fix="pass offset >= 0 and length >= 0 (or None for the rest of the object)",
        )


def check_expiry(expiry_seconds: int) -> None:
    if not 1 <= expiry_seconds <= MAX_PRESIGN_SECONDS:
        raise InvalidArgument(
            f"link expiry of {expiry_seconds} s is outside 1..{MAX_PRESIGN_SECONDS}",
            field="expiry_seconds",
            fix="choose an expiry between one second and seven days",
        )


def object_not_found(key: str) -> NotFound:
    return NotFound(
        f"no object at key {key!r}",
        resource_type="object",
        resource_name=key,
        fix="check the key, or re-run the export that writes it",
    )


def range_past_end(key: str, offset: int, size: int) -> InvalidArgument:
    return InvalidArgument(
        f"offset {offset} is past the end of {key!r} ({size} bytes)",
        field="offset",
        fix=f"use an offset between 0 and {size}",
    )


def source_file_size(path: Path) -> int:
    """Size of a file about to be uploaded; a missing file is the caller's NotFound."""
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        raise NotFound(
            f"file to upload {path} does not exist",
            resource_type="file",
            resource_name=str(path),
            fix="build the archive before storing it",
        ) from None


def check_prefix(prefix: str) -> str:
    """A listing prefix is any key's start; it must not climb out of the store either."""
    if prefix:
        check_key(prefix + "x")
    return prefix


WRITE_PROBE_KEY = "health/write-probe"
_PROBING = threading.Lock()
"""One probe at a time: a local store prunes the emptied folder while another probe writes."""


def check_writable(objects: ObjectStore) -> None:
    """Writes and removes a tiny object: a job learns before it computes (and health checks
    learn at all) that the archive could not be published."""
    with _PROBING, tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"ok")
        objects.put_file(WRITE_PROBE_KEY, probe)
        objects.delete(WRITE_PROBE_KEY)

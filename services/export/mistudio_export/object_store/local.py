"""Archives as plain files under one folder: the default store for a single-machine setup.

Writes land in ``<root>/.tmp`` and are renamed into place, so a reader (or a crash) never sees a
half-written object; ``.tmp`` is on the same filesystem as the objects, which is what makes the
rename atomic. Keys never start a segment with '.', so ``.tmp`` cannot collide with an object.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from mistudio_common.errors import NotFound

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

_TMP_DIR = ".tmp"
COPY_CHUNK = 8 * CHUNK_SIZE
"""Bytes copied between progress reports (each may cancel the write): a job renders and
streams each one, and one a MiB was 329 for a 344 MB archive."""


class LocalObjectStore:
    """An :class:`ObjectStore` over a folder.

    Presigned URLs are ``file://`` URLs: they work only on a machine that sees the same folder,
    and the reported expiry is informational, since nothing can revoke a file URL.
    """

    bucket = None
    """A folder: compute cannot read uploads from it by an ``s3://`` URI."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def put_file(
        self, key: str, path: Path, *, progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        target = self._path(key)
        total = source_file_size(path)
        tmp_dir = self.root / _TMP_DIR
        tmp_dir.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as dst, open(path, "rb") as src:
                _copy(src, dst, total, progress)
                dst.flush()
                os.fsync(dst.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, target)
        except BaseException:
            # BaseException too: a cancelled or interrupted write must not leave its temp file.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        return self.stat(key)

    def remove_unfinished(self, before: float) -> int:
        removed = 0
        tmp_dir = self.root / _TMP_DIR
        for leftover in tmp_dir.glob("put-*") if tmp_dir.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):  # its writer finished or a sweep raced
                if leftover.stat().st_mtime < before:
                    leftover.unlink()
                    removed += 1
        return removed

    def get_range(
        self, key: str, offset: int = 0, length: int | None = None, *, chunk_size: int = CHUNK_SIZE
    ) -> ChunkStream:
        check_range(offset, length)
        size = self.stat(key).size
        if offset > size:
            raise range_past_end(key, offset, size)
        remaining = size - offset if length is None else min(length, size - offset)
        f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the returned stream
        f.seek(offset)

        def chunks() -> Iterator[bytes]:
            left = remaining
            while left > 0:
                data = f.read(min(chunk_size, left))
                if not data:
                    return
                left -= len(data)
                yield data

        return ChunkStream(chunks(), f.close)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise object_not_found(key) from None
        if not path.is_file():
            raise object_not_found(key)
        return ObjectInfo(key=key, size=st.st_size, etag=f"{st.st_size:x}-{st.st_mtime_ns:x}")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Prune folders the object leaves empty, so listing stays cheap; stop at the root.
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def presigned_get_url(self, key: str, expiry_seconds: int) -> PresignedUrl:
        check_expiry(expiry_seconds)
        self.stat(key)
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=expiry_seconds)
        return PresignedUrl(url=self._path(key).as_uri(), expires_at=expires_at)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = self.root / check_prefix(prefix).rpartition("/")[0]
        keys: list[str] = []
        for folder, dirs, files in os.walk(start):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and not name.startswith("."):
                    keys.append(key)
        return self._stat_each(sorted(keys))

    def _stat_each(self, keys: Iterable[str]) -> Iterator[ObjectInfo]:
        for key in keys:
            # An object deleted between listing and stat is simply no longer listed.
            with contextlib.suppress(NotFound):
                yield self.stat(key)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)


def _copy(src: IO[bytes], dst: IO[bytes], total: int, progress: ProgressCallback | None) -> None:
    """Copies in the kernel (``sendfile``, as ``shutil.copyfile`` does): the bytes never pass
    through Python (a 344 MB archive: 0.136 CPU-s, 0.149 read and written in MiB chunks)."""
    done = 0
    while sent := os.sendfile(dst.fileno(), src.fileno(), done, COPY_CHUNK):
        done += sent
        if progress is not None:
            progress(done, total)

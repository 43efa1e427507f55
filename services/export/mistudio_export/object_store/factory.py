"""Builds the configured store from one URL, so settings stay a single string per deployment."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from mistudio_common.s3_address import bad_url, parse_s3_url

from mistudio_export.object_store.base import ObjectStore
from mistudio_export.object_store.local import LocalObjectStore


def object_store_from_url(
    url: str,
    access_key: str = "",
    secret_key: str = "",
    *,
    default_root: Path | None = None,
) -> ObjectStore:
    """``file:///path`` -> LocalObjectStore; ``s3://bucket?endpoint=...`` -> S3ObjectStore.

    An empty URL means the local default (``default_root``), matching the settings' default.
    """
    if not url:
        if default_root is None:
            raise bad_url(url, "is empty and no default folder was given")
        return LocalObjectStore(default_root)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise bad_url(url, "must name an absolute path, as file:///path")
        return LocalObjectStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        return _s3_store(url, access_key, secret_key)
    raise bad_url(url, f"has scheme {parts.scheme!r}; only file and s3 are supported")


def _s3_store(url: str, access_key: str, secret_key: str) -> ObjectStore:
    from mistudio_export.object_store.s3 import S3ObjectStore  # minio: only for a bucket

    address = parse_s3_url(url)
    return S3ObjectStore(
        address.endpoint,
        access_key,
        secret_key,
        address.bucket,
        secure=address.secure,
        region=address.region,
        part_size=address.part_size,
        public_endpoint=address.public_endpoint,
    )

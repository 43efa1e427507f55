"""Builds the configured store from one URL, so settings stay a single string per deployment."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from mistudio_common.errors import InvalidArgument

from mistudio_export.object_store.base import ObjectStore
from mistudio_export.object_store.local import LocalObjectStore
from mistudio_export.object_store.s3 import DEFAULT_PART_SIZE, S3ObjectStore

_S3_OPTIONS = frozenset({"endpoint", "secure", "region", "part_size", "public_endpoint"})
_URL_FIX = (
    "use file:///absolute/path or s3://bucket?endpoint=host:port&secure=false "
    "(optional: region=, part_size=<bytes>, public_endpoint=host:port)"
)


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
            raise _bad_url(url, "is empty and no default folder was given")
        return LocalObjectStore(default_root)
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _bad_url(url, "must name an absolute path, as file:///path")
        return LocalObjectStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        return _s3_store(url, parts.netloc, parts.path, parts.query, access_key, secret_key)
    raise _bad_url(url, f"has scheme {parts.scheme!r}; only file and s3 are supported")


def _s3_store(
    url: str, bucket: str, path: str, query: str, access_key: str, secret_key: str
) -> S3ObjectStore:
    if not bucket or path not in ("", "/"):
        raise _bad_url(url, "must name exactly one bucket, as s3://bucket?endpoint=host:port")
    options = {name: values[-1] for name, values in parse_qs(query).items()}
    unknown = sorted(set(options) - _S3_OPTIONS)
    if unknown:
        raise _bad_url(url, f"has unknown option(s) {', '.join(unknown)}")
    if not options.get("endpoint"):
        raise _bad_url(url, "has no endpoint=host:port")
    return S3ObjectStore(
        options["endpoint"],
        access_key,
        secret_key,
        bucket,
        secure=_flag(url, options.get("secure", "true")),
        region=options.get("region") or None,
        part_size=_int(url, options.get("part_size", str(DEFAULT_PART_SIZE))),
        public_endpoint=options.get("public_endpoint") or None,
    )


def _flag(url: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise _bad_url(url, f"has secure={value!r}; expected true or false")


def _int(url: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _bad_url(url, f"has part_size={value!r}; expected a number of bytes") from None


def _bad_url(url: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        f"object store URL {url!r} {problem}", field="object_store_url", fix=_URL_FIX
    )

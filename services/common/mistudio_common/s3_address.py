"""The ``s3://bucket?endpoint=host:port&...`` form of an object store setting, read the same way
by the export service (which writes archives and uploads) and compute (which reads uploads)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from mistudio_common.errors import InvalidArgument

DEFAULT_PART_SIZE = 16 * 1024 * 1024
"""Upload memory is about (parallel_uploads + 1) x part_size; 16 MiB keeps that small."""
URL_FIX = (
    "use file:///absolute/path or s3://bucket?endpoint=host:port&secure=false "
    "(optional: region=, part_size=<bytes>, public_endpoint=host:port)"
)
_OPTIONS = frozenset({"endpoint", "secure", "region", "part_size", "public_endpoint"})


@dataclass(frozen=True)
class S3Address:
    bucket: str
    endpoint: str
    secure: bool = True
    region: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    public_endpoint: str | None = None
    """The host:port people outside the deploy network use, for presigned links."""


def parse_s3_url(url: str, field: str = "object_store_url") -> S3Address:
    """The bucket and connection options of an ``s3://`` setting; InvalidArgument naming
    ``field`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.path not in ("", "/"):
        raise bad_url(url, "must name exactly one bucket, as s3://bucket?endpoint=host:port", field)
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise bad_url(url, f"has unknown option(s) {', '.join(unknown)}", field)
    if not options.get("endpoint"):
        raise bad_url(url, "has no endpoint=host:port", field)
    return S3Address(
        bucket=parts.netloc,
        endpoint=options["endpoint"],
        secure=_flag(url, options.get("secure", "true"), field),
        region=options.get("region") or None,
        part_size=_int(url, options.get("part_size", str(DEFAULT_PART_SIZE)), field),
        public_endpoint=options.get("public_endpoint") or None,
    )


def _flag(url: str, value: str, field: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise bad_url(url, f"has secure={value!r}; expected true or false", field)


def _int(url: str, value: str, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise bad_url(url, f"has part_size={value!r}; expected a number of bytes", field) from None


def bad_url(url: str, problem: str, field: str = "object_store_url") -> InvalidArgument:
    return InvalidArgument(f"object store URL {url!r} {problem}", field=field, fix=URL_FIX)

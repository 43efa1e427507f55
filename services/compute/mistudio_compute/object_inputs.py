"""Uploaded inputs (the ``s3://`` URIs ExportService.UploadInput returns), fetched into a cache.

The export service owns the object store and writes uploads into it; compute owns the tensor
work and reads its inputs, so it reads uploads from the same bucket with its own key (read-only
suffices) rather than have the export service relay gigabytes through itself. An upload is
fetched once into ``data_dir/compute/uploads/<owner>/<input_id>/`` (and used from there while
its manifest is still in the bucket): its manifest is read first
and every file checked against compute's size limit for its kind before a byte is downloaded;
each file is hashed as it arrives and renamed into place only when it matches the manifest's
sha256, so whatever is in the cache was verified. The cached path then passes the same
confinement as any other input (``input_files``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Generator, Mapping
from pathlib import Path

import urllib3
from mistudio_common.auth import Identity
from mistudio_common.errors import InvalidArgument, MistudioError, Unavailable
from mistudio_common.s3_address import S3Address
from mistudio_common.uploaded_inputs import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SAE_CONFIG_NAME,
    InputLocation,
    UploadKind,
    UploadManifest,
    check_owner,
    is_object_uri,
    parse_input_uri,
    upload_not_found,
)

from mistudio_compute.input_files import SIZE_SETTINGS, InputKind
from mistudio_compute.tokens import TokenSourceSpec
from mistudio_compute.values import SaeFiles, SaeRef

CHUNK_BYTES = 1 << 20
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket"})


def kind_of(kind: UploadKind, name: str) -> InputKind:
    """Which of compute's size limits an uploaded file falls under."""
    if kind is UploadKind.TOKEN_FILE:
        return InputKind.TOKEN_FILE
    return InputKind.SAE_CONFIG if name == SAE_CONFIG_NAME else InputKind.SAE_WEIGHTS


class ObjectInputs:
    """Reads uploads from the export service's bucket (``MISTUDIO_COMPUTE_OBJECT_STORE_URL``)."""

    def __init__(
        self, address: S3Address, access_key: str, secret_key: str, cache_dir: Path
    ) -> None:
        self.bucket = address.bucket
        self.cache_dir = cache_dir
        self._endpoint = address.endpoint
        from minio import Minio  # here: 0.15 CPU-s a compute without uploads does not spend

        self._client = Minio(
            address.endpoint,
            access_key or None,
            secret_key or None,
            secure=address.secure,
            region=address.region,
        )

    def fetch(self, uri: str, field: str, max_bytes: Mapping[InputKind, int]) -> Path:
        """The cached local path of ``uri``: the upload's folder, or the one file it names (a
        token upload's URI may also name just the upload)."""
        location = parse_input_uri(uri, field)
        if location.bucket != self.bucket:
            raise InvalidArgument(
                f"{field} {uri!r} is in bucket {location.bucket!r}; compute reads uploads only "
                f"from {self.bucket!r}",
                field=field,
                fix="use the uri UploadInput returned, or point MISTUDIO_COMPUTE_OBJECT_STORE_URL "
                "at the export service's bucket",
            )
        folder = self.cache_dir / location.owner / location.input_id
        manifest = self._manifest(location, folder, field)
        for file in manifest.files:
            kind = kind_of(manifest.kind, file.name)
            if file.size > max_bytes[kind]:
                raise InvalidArgument(
                    f"{field}: uploaded {kind.value} {file.name} has {file.size} bytes; the "
                    f"limit is {max_bytes[kind]}",
                    field=field,
                    fix=f"upload a smaller file, or raise "
                    f"MISTUDIO_COMPUTE_{SIZE_SETTINGS[kind].upper()}",
                )
        names = [file.name for file in manifest.files]
        if location.name and location.name not in names:
            raise upload_not_found(location, field)
        for file in manifest.files:
            target = folder / file.name
            if not target.exists():
                self._download(location, file.name, file.size, file.sha256, target, field)
        (folder / MANIFEST_NAME).write_bytes(manifest.to_json())
        if location.name:
            return folder / location.name
        return folder / names[0] if manifest.kind is UploadKind.TOKEN_FILE else folder

    def _manifest(self, location: InputLocation, folder: Path, field: str) -> UploadManifest:
        cached = folder / MANIFEST_NAME
        if cached.is_file():
            self._require_present(location, folder, field)
            return UploadManifest.from_json(cached.read_bytes(), field)
        data = b"".join(self._chunks(location, MANIFEST_NAME, MAX_MANIFEST_BYTES + 1, field))
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidArgument(
                f"{field}: the upload's manifest is over {MAX_MANIFEST_BYTES} bytes",
                field=field,
                fix="upload the input again with UploadInput",
            )
        folder.mkdir(parents=True, exist_ok=True)
        return UploadManifest.from_json(data, field)

    def _require_present(self, location: InputLocation, folder: Path, field: str) -> None:
        """A deleted upload (DeleteInput) is not read from the cache either: its cached copy
        goes when its manifest is gone from the bucket."""
        from minio.error import S3Error

        try:
            self._client.stat_object(self.bucket, location.key(MANIFEST_NAME))
        except S3Error as error:
            if error.code not in _MISSING:
                raise self._unavailable(f"{error.code}") from error
            shutil.rmtree(folder, ignore_errors=True)
            raise upload_not_found(location, field) from None
        except urllib3.exceptions.HTTPError as error:
            raise self._unavailable(error.__class__.__name__) from error

    def _download(
        self, location: InputLocation, name: str, size: int, sha256: str, target: Path, field: str
    ) -> None:
        """Into a temporary file beside ``target``, renamed into place once verified."""
        digest, received = hashlib.sha256(), 0
        handle, partial = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
        try:
            chunks = contextlib.closing(self._chunks(location, name, size + 1, field))
            with os.fdopen(handle, "wb") as sink, chunks as stream:
                for chunk in stream:
                    received += len(chunk)
                    if received > size:
                        break
                    digest.update(chunk)
                    sink.write(chunk)
            if received != size or digest.hexdigest() != sha256:
                raise InvalidArgument(
                    f"{field}: uploaded {name} does not match its manifest (size or sha256)",
                    field=field,
                    fix="upload the input again with UploadInput",
                )
            os.replace(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)

    def _chunks(
        self, location: InputLocation, name: str, limit: int, field: str
    ) -> Generator[bytes]:
        """At most ``limit`` bytes of one object of the upload."""
        from minio.error import S3Error

        response = None
        try:
            response = self._client.get_object(self.bucket, location.key(name), length=limit)
            yield from response.stream(CHUNK_BYTES)
        except S3Error as error:
            if error.code in _MISSING:
                raise upload_not_found(location, field) from None
            raise self._unavailable(f"{error.code}") from error
        except urllib3.exceptions.HTTPError as error:
            raise self._unavailable(error.__class__.__name__) from error
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def _unavailable(self, what: str) -> MistudioError:
        return Unavailable(
            f"the object store at {self._endpoint} could not serve an upload ({what})",
            field="object_store_url",
            fix="check MISTUDIO_COMPUTE_OBJECT_STORE_URL and the S3 keys (read access to the "
            "export service's bucket)",
        )


def check_caller_uploads(sae: SaeRef, tokens: TokenSourceSpec | None, caller: Identity) -> None:
    """A user naming uploads directly (ValidateSae) may name only its own; another owner's is
    NOT_FOUND, as a missing one. Services checked their own callers already."""
    if caller.sees_everything:
        return
    named = [
        ("sae.files.path", sae.path if isinstance(sae, SaeFiles) else ""),
        ("tokens.token_file", tokens.token_file if tokens is not None else ""),
    ]
    for field, location in named:
        if is_object_uri(location):
            check_owner(parse_input_uri(location, field), caller.name, field)

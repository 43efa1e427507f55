"""Receiving an uploaded SAE folder or token file (UploadInput) into the object store.

A stream is a header per file, each followed by that file's bytes. Every file is written to a
private staging folder while it is hashed and counted; it is checked against its header (name,
size, sha256, the size limits) when the next header or the end of the stream arrives. Only a
stream that checked out completely is stored, under ``inputs/<owner>/<input_id>/`` with its
manifest written last (``mistudio_common.uploaded_inputs``), so a refused, truncated or
cancelled upload leaves nothing in the object store.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mistudio_common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from mistudio_common.uploaded_inputs import (
    INPUTS_PREFIX,
    MANIFEST_NAME,
    SAE_CONFIG_NAME,
    SAE_WEIGHTS_NAME,
    InputLocation,
    UploadedFile,
    UploadKind,
    UploadManifest,
    check_file_name,
    check_segment,
    check_sha256,
    parse_input_uri,
    upload_not_found,
)

from mistudio_export.object_store import ObjectStore

HEADER_FIELD = "file"
CHUNK_FIELD = "chunk"


@dataclass(frozen=True)
class UploadLimits:
    """Bounds of ``ExportSettings.max_upload_*`` (README, Security: limits)."""

    sae_config_bytes: int
    sae_weights_bytes: int
    """Each of sae_weights.safetensors and sparsity.safetensors."""
    token_file_bytes: int
    owner_bytes: int
    """Everything one owner keeps uploaded at once."""

    def for_file(self, kind: UploadKind, name: str) -> tuple[int, str]:
        """The limit of one file and the setting that holds it."""
        if kind is UploadKind.TOKEN_FILE:
            return self.token_file_bytes, "MISTUDIO_EXPORT_MAX_UPLOAD_TOKEN_FILE_BYTES"
        if name == SAE_CONFIG_NAME:
            return self.sae_config_bytes, "MISTUDIO_EXPORT_MAX_UPLOAD_SAE_CONFIG_BYTES"
        return self.sae_weights_bytes, "MISTUDIO_EXPORT_MAX_UPLOAD_SAE_WEIGHTS_BYTES"


@dataclass(frozen=True)
class FileHeader:
    """The first message of each file: what follows and how to check it."""

    kind: UploadKind | None
    """None: the request named no kind."""
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StoredUpload:
    location: InputLocation
    manifest: UploadManifest

    @property
    def size(self) -> int:
        return sum(f.size for f in self.manifest.files)


@dataclass
class _Receiving:
    header: FileHeader
    path: Path
    sink: BinaryIO
    digest: hashlib._Hash
    received: int = 0


class Uploads:
    """Accepts uploads for the export service's bucket; one owner's total is checked and the
    upload stored under one lock, so two concurrent uploads cannot both squeeze under it."""

    def __init__(self, objects: ObjectStore, limits: UploadLimits, staging_root: Path) -> None:
        self._objects = objects
        self._bucket = objects.bucket
        """None: a folder store, which cannot hand compute an s3:// URI."""
        self.limits = limits
        self.staging_root = staging_root
        self._storing = threading.Lock()
        self._live: set[str] = set()
        """Staging folders of streams being received: the sweeper leaves them alone."""
        self._live_lock = threading.Lock()

    def receive(self, owner: str) -> UploadReceiver:
        if self._bucket is None:
            raise FailedPrecondition(
                "uploads are kept in an S3 bucket, and this export service stores to a folder",
                field="object_store_url",
                fix="set MISTUDIO_EXPORT_OBJECT_STORE_URL to s3://bucket?endpoint=host:port, or "
                "name local paths instead of uploading (the CLI's local run reads them directly)",
            )
        check_segment(owner, "owner")
        self.staging_root.mkdir(parents=True, exist_ok=True)
        with self._live_lock:
            staging = Path(tempfile.mkdtemp(prefix="upload-", dir=self.staging_root))
            self._live.add(staging.name)
        return UploadReceiver(self, owner, self._bucket, staging)

    def staging_removable(self, name: str) -> bool:
        """Whether ``staging_root/name`` is a leftover: no stream of this process writes it
        (a crash mid-upload leaves its folder behind; ``FolderSweeper`` removes it)."""
        with self._live_lock:
            return name not in self._live

    def release(self, staging: Path) -> None:
        """Removes a stream's staging folder once it is stored or refused."""
        shutil.rmtree(staging, ignore_errors=True)
        with self._live_lock:
            self._live.discard(staging.name)

    def stored_bytes(self, owner: str) -> int:
        return sum(obj.size for obj in self._objects.list(f"{INPUTS_PREFIX}/{owner}/"))

    def check_owner_total(self, owner: str, adding: int) -> None:
        held = self.stored_bytes(owner)
        if held + adding > self.limits.owner_bytes:
            raise ResourceExhausted(
                f"owner {owner!r} keeps {held} bytes of uploads; {adding} more would pass the "
                f"limit of {self.limits.owner_bytes}",
                field=HEADER_FIELD + ".size",
                fix="remove uploads no longer needed (DeleteInput), or raise "
                "MISTUDIO_EXPORT_MAX_UPLOAD_BYTES_PER_OWNER",
            )

    def delete(self, uri: str, owner: str | None) -> int:
        """Removes the upload ``uri`` names, manifest first; ``owner`` None: any owner's.
        Returns the bytes removed; NOT_FOUND for a missing or another owner's upload."""
        location = parse_input_uri(uri, "uri")
        if location.bucket != self._bucket or (owner is not None and location.owner != owner):
            raise upload_not_found(location, "uri")
        with self._storing:
            objects = list(self._objects.list(location.prefix + "/"))
            if not objects:
                raise upload_not_found(location, "uri")
            manifest = location.key(MANIFEST_NAME)
            for obj in sorted(objects, key=lambda o: o.key != manifest):
                self._objects.delete(obj.key)
        return sum(obj.size for obj in objects if obj.key != manifest)

    def store(
        self, location: InputLocation, kind: UploadKind, files: list[tuple[UploadedFile, Path]]
    ) -> StoredUpload:
        """Puts the checked files, then the manifest; on failure removes what was put."""
        owner = location.owner
        manifest = UploadManifest(kind, tuple(f for f, _ in files))
        manifest_path = files[0][1].parent / MANIFEST_NAME  # beside the staged files
        manifest_path.write_bytes(manifest.to_json())
        put: list[str] = []
        with self._storing:
            self.check_owner_total(owner, sum(f.size for f, _ in files))
            try:
                for file, path in files:
                    put.append(location.key(file.name))
                    self._objects.put_file(put[-1], path)
                put.append(location.key(MANIFEST_NAME))
                self._objects.put_file(put[-1], manifest_path)
            except BaseException:
                for key in put:
                    self._objects.delete(key)
                raise
        return StoredUpload(location, manifest)


class UploadReceiver:
    """One stream's files in a staging folder; ``discard`` always removes the folder."""

    def __init__(self, uploads: Uploads, owner: str, bucket: str, staging: Path) -> None:
        self._uploads = uploads
        self._owner = owner
        self._bucket = bucket
        self._staging = staging
        self._kind: UploadKind | None = None
        self._done: list[tuple[UploadedFile, Path]] = []
        self._current: _Receiving | None = None

    def begin(self, header: FileHeader) -> None:
        """Ends the file before (checking it) and starts receiving ``header``'s."""
        self._end_current()
        self._check_header(header)
        path = self._staging / header.name
        self._current = _Receiving(header, path, path.open("xb"), hashlib.sha256())

    def write(self, chunk: bytes) -> None:
        current = self._current
        if current is None:
            raise InvalidArgument(
                "a chunk arrived before any file header",
                field=CHUNK_FIELD,
                fix="send an UploadInputRequest with file set before the file's chunks",
            )
        current.received += len(chunk)
        if current.received > current.header.size:
            raise InvalidArgument(
                f"{current.header.name} sent more than the {current.header.size} bytes its "
                "header declares",
                field=CHUNK_FIELD,
                fix="declare the file's exact size in file.size",
            )
        current.digest.update(chunk)
        current.sink.write(chunk)

    def finish(self) -> StoredUpload:
        """Checks the last file and the whole upload, then stores it."""
        self._end_current()
        kind = self._kind
        names = [file.name for file, _ in self._done]
        if kind is None:
            raise InvalidArgument(
                "the upload holds no file", field=HEADER_FIELD, fix="send at least one file"
            )
        if kind is UploadKind.SAE_FOLDER and SAE_WEIGHTS_NAME not in names:
            raise InvalidArgument(
                f"an SAE folder needs {SAE_WEIGHTS_NAME}; the upload holds {names}",
                field=HEADER_FIELD + ".name",
                fix=f"upload {SAE_WEIGHTS_NAME} (and cfg.json) of the SAELens folder",
            )
        name = self._done[0][0].name if kind is UploadKind.TOKEN_FILE else ""
        location = InputLocation(self._bucket, self._owner, uuid.uuid4().hex, name)
        return self._uploads.store(location, kind, self._done)

    def discard(self) -> None:
        if self._current is not None:
            self._current.sink.close()
        self._uploads.release(self._staging)

    def _check_header(self, header: FileHeader) -> None:
        field = HEADER_FIELD
        if header.kind is None:
            raise InvalidArgument(
                "the file header names no kind",
                field=field + ".kind",
                fix="set file.kind to UPLOAD_KIND_SAE_FILE or UPLOAD_KIND_TOKEN_FILE",
            )
        if self._kind not in (None, header.kind):
            raise InvalidArgument(
                "one upload mixes SAE files and token files",
                field=field + ".kind",
                fix="upload an SAE folder and a token file in separate UploadInput calls",
            )
        check_file_name(header.kind, header.name, field + ".name")
        check_sha256(header.sha256, field + ".sha256")
        if header.name in (file.name for file, _ in self._done):
            raise InvalidArgument(
                f"{header.name} is sent twice", field=field + ".name", fix="send each file once"
            )
        if header.kind is UploadKind.TOKEN_FILE and self._done:
            raise InvalidArgument(
                "a token file upload holds one file",
                field=field + ".name",
                fix="upload each token file in its own UploadInput call",
            )
        limit, setting = self._uploads.limits.for_file(header.kind, header.name)
        if not 1 <= header.size <= limit:
            raise InvalidArgument(
                f"{header.name} declares {header.size} bytes; 1 to {limit} are accepted",
                field=field + ".size",
                fix=f"upload a smaller file, or raise {setting}",
            )
        held = sum(file.size for file, _ in self._done)
        self._uploads.check_owner_total(self._owner, held + header.size)
        self._kind = header.kind

    def _end_current(self) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        current.sink.close()
        header = current.header
        if current.received != header.size:
            raise InvalidArgument(
                f"{header.name} ended after {current.received} of the {header.size} bytes its "
                "header declares (a truncated upload)",
                field=CHUNK_FIELD,
                fix="send the whole file again",
            )
        if current.digest.hexdigest() != header.sha256:
            raise InvalidArgument(
                f"{header.name}'s bytes do not hash to the sha256 its header declares",
                field=HEADER_FIELD + ".sha256",
                fix="send the file's own sha256, and check that it was not changed while read",
            )
        self._done.append((UploadedFile(header.name, header.size, header.sha256), current.path))

"""Inputs uploaded to the object store (ExportService.UploadInput): where they are kept and the
manifest that describes them. The export service writes them; the compute service reads them.

An upload is the folder ``inputs/<owner>/<input_id>/`` holding its files and, written last,
``manifest.json`` with each file's name, size and sha256; an upload without a manifest is
incomplete and never read. Its URI is ``s3://<bucket>/inputs/<owner>/<input_id>`` (the folder:
an SAE) or that plus ``/<name>`` (one file: a token file). The owner segment is the uploader's
identity, so who may use an upload is decided from its URI alone.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

from mistudio_common.errors import InvalidArgument, NotFound

SCHEME = "s3://"
INPUTS_PREFIX = "inputs"
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 1024
"""A manifest lists at most a few files; anything larger is not one."""

SAE_CONFIG_NAME = "cfg.json"
SAE_WEIGHTS_NAME = "sae_weights.safetensors"
SAE_SPARSITY_NAME = "sparsity.safetensors"
SAE_FILE_NAMES = (SAE_CONFIG_NAME, SAE_WEIGHTS_NAME, SAE_SPARSITY_NAME)
"""The SAELens folder layout: the only names an uploaded SAE folder may hold."""
TOKEN_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}\.(npy|safetensors)")
"""A token file's name: no folders, no hidden files, a format compute reads."""
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
"""An owner name or input id as one key segment (no '/', no leading '.')."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


class UploadKind(enum.Enum):
    """What one upload holds."""

    SAE_FOLDER = "sae_folder"
    TOKEN_FILE = "token_file"


@dataclass(frozen=True)
class UploadedFile:
    name: str
    size: int
    sha256: str
    """Lowercase hex digest of the file's bytes."""


@dataclass(frozen=True)
class UploadManifest:
    kind: UploadKind
    files: tuple[UploadedFile, ...]

    def to_json(self) -> bytes:
        files = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files]
        return json.dumps({"kind": self.kind.value, "files": files}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, field: str) -> UploadManifest:
        """The manifest, every name, size and digest checked; InvalidArgument on ``field``."""
        try:
            raw = json.loads(data)
            kind = UploadKind(raw["kind"])
            files = tuple(
                UploadedFile(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in raw["files"]
            )
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument(
                "the upload's manifest is not readable",
                field=field,
                fix="upload the input again with UploadInput",
            ) from None
        for file in files:
            check_file_name(kind, file.name, field)
            check_sha256(file.sha256, field)
            if file.size < 0:
                raise InvalidArgument(f"{file.name} has a negative size", field=field)
        return cls(kind, files)


def check_file_name(kind: UploadKind, name: str, field: str) -> None:
    """Only the SAELens names in an SAE folder, only a plain ``<name>.npy|.safetensors`` as a
    token file: nothing that could name a folder or climb out of one."""
    if kind is UploadKind.SAE_FOLDER and name not in SAE_FILE_NAMES:
        raise InvalidArgument(
            f"{name!r} is not a file of a SAELens folder",
            field=field,
            fix=f"upload only {', '.join(SAE_FILE_NAMES)}",
        )
    if kind is UploadKind.TOKEN_FILE and not TOKEN_FILE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{name!r} is not a token file name",
            field=field,
            fix="name it like 'tokens.npy' or 'tokens.safetensors' (letters, digits, '_', '-')",
        )


def check_sha256(digest: str, field: str) -> None:
    if not _SHA256.fullmatch(digest):
        raise InvalidArgument(
            "sha256 is not 64 lowercase hex digits",
            field=field,
            fix="send hashlib.sha256(data).hexdigest() of the file",
        )


def check_segment(value: str, field: str) -> str:
    """An owner or input id usable as one object key segment."""
    if not _SEGMENT.fullmatch(value):
        raise InvalidArgument(
            f"{value!r} cannot name an upload folder",
            field=field,
            fix="use letters, digits, '.', '_', '-' or '@' (not first), at most 128",
        )
    return value


@dataclass(frozen=True)
class InputLocation:
    """One upload (``name`` empty) or one file of it, in ``bucket``."""

    bucket: str
    owner: str
    input_id: str
    name: str = ""

    @property
    def prefix(self) -> str:
        return f"{INPUTS_PREFIX}/{self.owner}/{self.input_id}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    @property
    def uri(self) -> str:
        tail = f"/{self.name}" if self.name else ""
        return f"{SCHEME}{self.bucket}/{self.prefix}{tail}"


def is_object_uri(location: str) -> bool:
    return location.startswith(SCHEME)


def parse_input_uri(uri: str, field: str) -> InputLocation:
    """``s3://bucket/inputs/<owner>/<input_id>[/<name>]``; anything else is InvalidArgument."""
    bucket, _, key = uri.removeprefix(SCHEME).partition("/")
    parts = key.rstrip("/").split("/")
    if not bucket or len(parts) not in (3, 4) or parts[0] != INPUTS_PREFIX:
        raise InvalidArgument(
            f"{field} {uri!r} does not name an uploaded input",
            field=field,
            fix="use the uri UploadInput returned: s3://<bucket>/inputs/<owner>/<input_id>",
        )
    owner = check_segment(parts[1], field)
    input_id = check_segment(parts[2], field)
    name = parts[3] if len(parts) == 4 else ""
    if name and name not in SAE_FILE_NAMES and not TOKEN_FILE_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{field} {uri!r} names no file an upload can hold",
            field=field,
            fix="use the uri UploadInput returned",
        )
    return InputLocation(bucket, owner, input_id, name)


def upload_not_found(location: InputLocation, field: str) -> NotFound:
    """What a missing upload and another owner's upload both look like."""
    return NotFound(
        f"{field}: no uploaded input {location.uri!r}",
        resource_type="uploaded input",
        resource_name=location.uri,
        fix="upload it with UploadInput (mistudio-export upload-input) and use the uri returned",
    )


def check_owner(location: InputLocation, owner: str, field: str) -> None:
    """NOT_FOUND unless the upload is ``owner``'s (no existence leak to other owners)."""
    if location.owner != owner:
        raise upload_not_found(location, field)

"""The trust boundary for files a request names: SAE weights and configs, token files, text
files and llama2.c model files are opened only as regular files under the configured input roots.

Every path is resolved with ``os.path.realpath`` first, so neither ``..`` nor a symlink inside a
root leads out of it; devices, FIFOs and ``/proc`` entries are refused as not regular; each kind
of file has its own size limit. Messages name the request field and the setting, never what a
file holds, and a path outside the roots is refused before its existence is looked at.

The real path is then opened from its root one component at a time with O_NOFOLLOW, and the
checks run on the open descriptor (fstat), not on the name. Loaders read through
``InputPolicy.open`` (an ``Opener``), so a path component swapped for a symlink between the check
and the read is refused rather than followed out of the roots.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mistudio_common.errors import InvalidArgument
from mistudio_common.uploaded_inputs import is_object_uri

ROOTS_SETTING = "MISTUDIO_COMPUTE_INPUT_ROOTS"


class InputKind(enum.Enum):
    """What a file is read as; each kind has its own size limit (``ComputeSettings``)."""

    SAE_WEIGHTS = "SAE weights file"
    SAE_CONFIG = "SAE config file"
    TOKEN_FILE = "token file"
    TEXT_FILE = "text file"
    MODEL_FILE = "model file"


KIND_FIELDS: Mapping[InputKind, str] = {
    InputKind.SAE_WEIGHTS: "sae",
    InputKind.SAE_CONFIG: "sae",
    InputKind.TOKEN_FILE: "tokens.token_file",
    InputKind.TEXT_FILE: "tokens.text.paths",
    InputKind.MODEL_FILE: "model_id",
}
"""The request field an opened file came from, for errors raised while reading it."""

Opener = Callable[[Path, InputKind], BinaryIO]
"""Opens a file a loader reads: ``InputPolicy.open`` for request inputs, ``open_trusted``
for the service's own files."""

SIZE_SETTINGS: Mapping[InputKind, str] = {
    InputKind.SAE_WEIGHTS: "max_sae_weights_bytes",
    InputKind.SAE_CONFIG: "max_sae_config_bytes",
    InputKind.TOKEN_FILE: "max_token_file_bytes",
    InputKind.TEXT_FILE: "max_text_file_bytes",
    InputKind.MODEL_FILE: "max_model_file_bytes",
}
"""The ``ComputeSettings`` field holding each kind's limit (env: MISTUDIO_COMPUTE_<NAME>)."""


class UploadedInputs(Protocol):
    """Where ``s3://`` URIs of uploaded inputs are fetched to (``object_inputs``)."""

    cache_dir: Path

    def fetch(self, uri: str, field: str, max_bytes: Mapping[InputKind, int]) -> Path: ...


@dataclass(frozen=True)
class InputPolicy:
    roots: tuple[Path, ...]
    """Real paths of the allowed folders (or single files)."""
    max_bytes: Mapping[InputKind, int]
    uploads: UploadedInputs | None = None
    """None: no object store is configured, and ``s3://`` URIs are refused."""

    @classmethod
    def create(
        cls,
        roots: Iterable[str | Path],
        max_bytes: Mapping[InputKind, int],
        uploads: UploadedInputs | None = None,
    ) -> InputPolicy:
        """The upload cache, when there is one, is a root like the others."""
        cache = (uploads.cache_dir,) if uploads is not None else ()
        real = tuple(Path(os.path.realpath(os.path.expanduser(r))) for r in (*roots, *cache))
        return cls(real, dict(max_bytes), uploads)

    def with_roots(self, *roots: str | Path) -> InputPolicy:
        """This policy plus ``roots`` (e.g. the HuggingFace cache for hub SAEs)."""
        return InputPolicy.create((*self.roots, *roots), self.max_bytes, self.uploads)

    def localized(self, location: str, field: str) -> str:
        """``location`` as a local path: an uploaded input's ``s3://`` URI is fetched (and
        verified) into the upload cache first; anything else is returned as it is."""
        if not is_object_uri(location):
            return location
        if self.uploads is None:
            raise InvalidArgument(
                f"{field} {location!r} is an uploaded input, and this compute service reads no "
                "object store",
                field=field,
                fix="set MISTUDIO_COMPUTE_OBJECT_STORE_URL (and _S3_ACCESS_KEY/_S3_SECRET_KEY) to "
                "the export service's bucket",
            )
        return str(self.uploads.fetch(location, field, self.max_bytes))

    def allows(self, path: str | Path) -> bool:
        return self._holds(_real(path))

    def _holds(self, real: Path) -> bool:
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def folder(self, path: str | Path, field: str) -> Path:
        """The real path of a folder under a root."""
        real = self._confined(path, field)
        if not real.is_dir():
            raise InvalidArgument(
                f"{field} {str(path)!r} is not a folder",
                field=field,
                fix="name a folder readable by the compute service",
            )
        return real

    def file(self, path: str | Path, kind: InputKind, field: str) -> Path:
        """The real path of a regular file under a root, no larger than ``kind``'s limit."""
        real = self._confined(path, field)
        os.close(self._checked_descriptor(real, str(path), kind, field))
        return real

    def open(self, path: str | Path, kind: InputKind, field: str = "") -> BinaryIO:
        """The file, opened as ``file`` checks it: what is read is what was checked, even if a
        path component is swapped for a symlink meanwhile (module doc)."""
        field = field or KIND_FIELDS[kind]
        real = self._confined(path, field)
        return os.fdopen(self._checked_descriptor(real, str(path), kind, field), "rb")

    def optional_file(self, path: Path, kind: InputKind, field: str) -> Path | None:
        """``file`` for a companion that may be absent (a SAE's cfg.json, sparsity)."""
        if not os.path.lexists(path):
            return None
        return self.file(path, kind, field)

    def _checked_descriptor(self, real: Path, named: str, kind: InputKind, field: str) -> int:
        """``real`` opened beneath its root, checked on the descriptor: a regular file within
        the size limit. The caller owns the descriptor."""
        try:
            descriptor = _open_beneath(self._root_of(real), real)
        except FileNotFoundError:
            raise InvalidArgument(
                f"{kind.value} {named!r} does not exist",
                field=field,
                fix="name a file readable by the compute service",
            ) from None
        except OSError:  # ELOOP / ENOTDIR: a component became a symlink; or unreadable
            raise InvalidArgument(
                f"{kind.value} {named!r} cannot be opened as a file under the input roots",
                field=field,
                fix="name a readable regular file that no one is replacing while it is read",
            ) from None
        info = os.fstat(descriptor)
        problem = _problem(info, kind, self.max_bytes[kind], named)
        if problem is not None:
            os.close(descriptor)
            message, fix = problem
            raise InvalidArgument(message, field=field, fix=fix)
        return descriptor

    def _root_of(self, real: Path) -> Path:
        """The innermost root holding ``real`` (``_confined`` made sure there is one)."""
        holding = [root for root in self.roots if real == root or real.is_relative_to(root)]
        return max(holding, key=lambda root: len(root.parts))

    def _confined(self, path: str | Path, field: str) -> Path:
        if not str(path):
            raise InvalidArgument(f"{field} is empty", field=field, fix="name a file")
        real = _real(path)
        if not self._holds(real):
            raise InvalidArgument(
                f"{field} {str(path)!r} is outside the compute service's input roots",
                field=field,
                fix=f"put the file under an input root ({ROOTS_SETTING}; default: the data "
                "folder), or run the CLI locally on it",
            )
        return real


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def _problem(
    info: os.stat_result, kind: InputKind, limit: int, named: str
) -> tuple[str, str] | None:
    """Why an opened file may not be read as ``kind`` (message, fix), or None."""
    if not stat.S_ISREG(info.st_mode):
        return (
            f"{kind.value} {named!r} is not a regular file",
            "name a regular file (not a device, pipe, folder or /proc entry)",
        )
    if info.st_size > limit:
        return (
            f"{kind.value} {named!r} has {info.st_size} bytes; the limit is {limit}",
            f"use a smaller file, or raise MISTUDIO_COMPUTE_{SIZE_SETTINGS[kind].upper()}",
        )
    return None


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
"""O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not regular)."""


def _open_beneath(root: Path, real: Path) -> int:
    """Opens ``real`` from ``root`` one component at a time (openat), following no symlink:
    ``real`` came from realpath, so a symlink met now was put there after the check."""
    parts = real.relative_to(root).parts
    if not parts:
        return os.open(root, _FILE_FLAGS)
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=folder)
    finally:
        os.close(folder)


def open_trusted(path: Path, kind: InputKind) -> BinaryIO:
    """An ``Opener`` for files the service chose itself (demo assets, training), not a request."""
    return path.open("rb")


def descriptor_path(handle: BinaryIO) -> str:
    """A path naming the open file itself, for readers that take only paths (safetensors): it
    reaches the file that was opened, whatever its name now points to."""
    return f"/dev/fd/{handle.fileno()}"

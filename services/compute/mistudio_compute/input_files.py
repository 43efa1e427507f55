"""The trust boundary for files a request names: SAE weights and configs, token files, text
files and llama2.c model files are opened only as regular files under the configured input roots.

Every path is resolved with ``os.path.realpath`` first, so neither ``..`` nor a symlink inside a
root leads out of it; devices, FIFOs and ``/proc`` entries are refused as not regular; each kind
of file has its own size limit. Messages name the request field and the setting, never what a
file holds, and a path outside the roots is refused before its existence is looked at.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
        real = Path(os.path.realpath(os.path.expanduser(path)))
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
        try:
            info = real.stat()
        except OSError:
            raise InvalidArgument(
                f"{kind.value} {str(path)!r} does not exist",
                field=field,
                fix="name a file readable by the compute service",
            ) from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(
                f"{kind.value} {str(path)!r} is not a regular file",
                field=field,
                fix="name a regular file (not a device, pipe, folder or /proc entry)",
            )
        limit = self.max_bytes[kind]
        if info.st_size > limit:
            raise InvalidArgument(
                f"{kind.value} {str(path)!r} has {info.st_size} bytes; the limit is {limit}",
                field=field,
                fix=f"use a smaller file, or raise MISTUDIO_COMPUTE_{SIZE_SETTINGS[kind].upper()}",
            )
        return real

    def optional_file(self, path: Path, kind: InputKind, field: str) -> Path | None:
        """``file`` for a companion that may be absent (a SAE's cfg.json, sparsity)."""
        if not os.path.lexists(path):
            return None
        return self.file(path, kind, field)

    def _confined(self, path: str | Path, field: str) -> Path:
        if not str(path):
            raise InvalidArgument(f"{field} is empty", field=field, fix="name a file")
        if not self.allows(path):
            raise InvalidArgument(
                f"{field} {str(path)!r} is outside the compute service's input roots",
                field=field,
                fix=f"put the file under an input root ({ROOTS_SETTING}; default: the data "
                "folder), or run the CLI locally on it",
            )
        return Path(os.path.realpath(os.path.expanduser(path)))

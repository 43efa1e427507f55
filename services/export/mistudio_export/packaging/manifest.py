"""manifest.json: the path, size and SHA-256 of every file an archive carries.

It is written into the staging folder and zipped as the archive's first entry, so the archive
carries its own checklist: anyone can tell a complete, untouched download from a truncated or
edited one, with or without miStudio.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistudio_common.errors import InvalidArgument, NotFound

ARCHIVE_FORMAT_VERSION = 1
"""Bumped when the archive layout or the manifest's shape changes incompatibly."""
MANIFEST_NAME = "manifest.json"
CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    """'/'-separated, relative to the archive root."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[ManifestEntry, ...]
    archive_format_version: int = ARCHIVE_FORMAT_VERSION

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, files in path order, so equal folders give equal bytes."""
        return b"".join(self.json_parts())

    def json_parts(self) -> Iterator[bytes]:
        """``to_json``'s bytes entry by entry, as ``json.dumps(indent=2, sort_keys=True,
        ensure_ascii=False)`` writes them: no document of every entry is built (a 131,072-feature
        export lists that many files)."""
        yield b'{\n  "archive_format_version": %d,\n  "files": [' % self.archive_format_version
        for n, f in enumerate(sorted(self.files, key=lambda f: f.path)):
            path = json.dumps(f.path, ensure_ascii=False)
            entry = f'\n    {{\n      "path": {path},\n      "sha256": {json.dumps(f.sha256)},\n'
            yield (("," if n else "") + entry + f'      "size": {f.size}\n    }}').encode()
        yield b"\n  ]\n}\n" if self.files else b"]\n}\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
            files = tuple(_entry(item) for item in body["files"])
            version = body["archive_format_version"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InvalidArgument(
                f"{MANIFEST_NAME} is not a valid manifest: {type(exc).__name__}: {str(exc)[:200]}",
                field=MANIFEST_NAME,
                fix="rebuild the archive; the manifest must not be edited by hand",
            ) from None
        if not isinstance(version, int):
            raise InvalidArgument(f"archive_format_version {version!r} is not an integer")
        return cls(files=files, archive_format_version=version)


def _entry(item: dict[str, Any]) -> ManifestEntry:
    path, size, digest = item["path"], item["size"], item["sha256"]
    if not isinstance(path, str) or not isinstance(size, int) or not isinstance(digest, str):
        raise TypeError(f"entry {item!r} needs a string path, an integer size and a sha256")
    return ManifestEntry(path=path, size=size, sha256=digest)


def staged_files(staging_dir: Path) -> list[tuple[str, int]]:
    """(path, size) of every regular file under the folder, sorted, except the root manifest.

    Symlinks are refused rather than followed: an archive must contain what the folder holds,
    not whatever a link happens to point at on the exporting machine.
    """
    root = Path(staging_dir)
    if not root.is_dir():
        raise NotFound(
            f"staging folder {root} does not exist",
            resource_type="folder",
            resource_name=str(root),
            fix="write the export's files into the staging folder first",
        )
    found: list[tuple[str, int]] = []
    base = len(str(root)) + 1
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(folder, name)
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                continue
            rel = full[base:].replace(os.sep, "/")
            if not stat.S_ISREG(st.st_mode) or "\\" in rel:
                raise InvalidArgument(
                    f"{rel} in the staging folder is not a plain file with a portable name",
                    field=rel,
                    fix="replace links and special files by regular files; avoid '\\' in names",
                )
            if rel != MANIFEST_NAME:
                found.append((rel, st.st_size))
    return sorted(found)


def write_manifest(staging_dir: Path, manifest: Manifest) -> None:
    """Writes ``manifest.json`` at the folder's root (replacing an old one)."""
    with open(Path(staging_dir) / MANIFEST_NAME, "wb") as f:
        f.writelines(manifest.json_parts())

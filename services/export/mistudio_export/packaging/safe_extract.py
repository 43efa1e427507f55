"""Extracting an archive that may be hostile: its declared sizes are checked against
``ArchiveLimits`` before a byte is written, and each entry lands only at a plain path under the
target folder (no absolute names, ``..``, symlink entries, or a name below a file's name).

Problems are returned as (entry name, reason) pairs; nothing here raises for bad content.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mistudio_export.limits import ARCHIVE_LIMITS, ArchiveLimits

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Extraction:
    refused: str = ""
    """Why nothing was extracted (a limit, or an unreadable archive); "" when it went ahead."""
    unreadable: bool = False
    skipped: tuple[tuple[str, str], ...] = ()
    """(entry name, reason) of entries left out."""

    @property
    def ok(self) -> bool:
        return not self.refused


def check_limits(zf: zipfile.ZipFile, limits: ArchiveLimits = ARCHIVE_LIMITS) -> str:
    """Why ``zf`` may not be expanded ("" when it may), from its central directory alone."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        return f"{len(infos)} entries; the limit is {limits.max_entries}"
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        return f"expands to {total} bytes; the limit is {limits.max_total_bytes}"
    for info in infos:
        if info.file_size > limits.max_entry_bytes:
            return (
                f"{info.filename!r} expands to {info.file_size} bytes; "
                f"the limit per file is {limits.max_entry_bytes}"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
            return (
                f"{info.filename!r} is compressed {ratio:.0f}:1; the limit is "
                f"{limits.max_ratio:.0f}:1 (a zip bomb)"
            )
    return ""


def safe_extract(
    zip_path: Path,
    target: Path,
    limits: ArchiveLimits = ARCHIVE_LIMITS,
    wanted: Callable[[str], object] = lambda name: True,
) -> Extraction:
    """Extracts what may be extracted of ``zip_path`` into ``target`` (module doc); entries whose
    names ``wanted`` rejects are passed over silently."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            refused = check_limits(zf, limits)
            if refused:
                return Extraction(refused=refused)
            target.mkdir(parents=True, exist_ok=True)
            skipped = [
                (info.filename, reason)
                for info in zf.infolist()
                if wanted(info.filename) and (reason := _extract_entry(zf, info, target))
            ]
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        reason = f"not a readable ZIP archive ({type(exc).__name__}: {exc})"
        return Extraction(refused=reason, unreadable=True)
    return Extraction(skipped=tuple(skipped))


def _extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str:
    """Writes one entry; returns why it was skipped, or ""."""
    name = info.filename
    parts = name.rstrip("/").split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or "" in parts or ":" in parts[0]:
        return "unsafe path (absolute, '..' or a drive)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link entry"
    if info.flag_bits & 0x1:
        return "encrypted"
    destination = target.joinpath(*parts)
    if not _plain_folders(target, parts[:-1]):
        return "lies below another entry that is a file or a link"
    if info.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        return ""
    if os.path.lexists(destination):
        return "a second entry of the same name"
    destination.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        with zf.open(info) as src, os.fdopen(os.open(destination, flags, 0o644), "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        destination.unlink(missing_ok=True)
        return f"unreadable ({type(exc).__name__})"
    return ""


def _plain_folders(target: Path, folders: list[str]) -> bool:
    """Whether each of ``folders`` under ``target`` is absent or a real folder (not a link)."""
    current = target
    for part in folders:
        current = current / part
        if os.path.lexists(current) and (current.is_symlink() or not current.is_dir()):
            return False
    return True

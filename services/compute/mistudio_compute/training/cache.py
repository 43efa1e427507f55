"""Content-keyed cache folders for the demo's model-side assets.

An asset lives in ``<cache_dir>/<kind>-<key>/`` where the key hashes everything the asset depends
on (file hashes, seeds, sizes, a format version), so a changed input builds a new folder instead of
silently reusing a stale one. A folder is written under a temporary name and renamed into place
only when complete, so an interrupted build is never mistaken for a cached one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "COMPLETE"


@cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    stat = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-serialisable key parts (order-independent)."""
    text = json.dumps(dict(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cached_folder(cache_dir: Path, kind: str, key: str) -> Path:
    return cache_dir / f"{kind}-{key}"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def build_folder(folder: Path, build: Callable[[Path], None]) -> Path:
    """Runs ``build(tmp)`` in a fresh temporary folder next to ``folder``, then renames it there.

    If another process finished the same folder meanwhile, its copy is kept and ours discarded.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text("", encoding="utf-8")
        if folder.exists() and not is_complete(folder):
            shutil.rmtree(folder)  # left over from an older, interrupted layout
        try:
            tmp.rename(folder)
        except OSError:
            if not is_complete(folder):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def write_json(path: Path, data: Any) -> None:
    """Deterministic JSON (sorted keys, fixed indentation) so cached files diff cleanly."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

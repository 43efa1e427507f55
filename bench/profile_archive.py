"""Profile CREATING_ARCHIVE (``build_archive``, then the object store's ``put_file``) on an
export's folder: CPU seconds of the archive and of the upload, so a change to them can be
judged on a busy machine. Ends with the archive's sha256: equal before and after a change means
byte-identical output.

The folder gets its manifest.json (re)written; give it a copy (``cp -al`` the files, but let
manifest.json be a file of its own). The upload goes to a folder store, as the local stack's.

    python bench/profile_archive.py --folder /tmp/copy/out --work /tmp/archive-work --repeat 3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mistudio_export.object_store import LocalObjectStore
from mistudio_export.packaging import build_archive


def cpu_s() -> float:
    """CPU seconds of this process (every thread) and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folder", type=Path, required=True, help="a copy of an export's folder")
    parser.add_argument("--work", type=Path, required=True, help="where the ZIP and store go")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    for run in range(args.repeat):
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        store = LocalObjectStore(args.work / "store")
        wall, cpu = time.perf_counter(), cpu_s()
        archive = build_archive(args.folder, args.work / "archive.zip", progress=lambda d, t: None)
        packed_wall, packed_cpu = time.perf_counter() - wall, cpu_s() - cpu
        cpu, wall = cpu_s(), time.perf_counter()
        store.put_file("exports/bench/archive.zip", archive.path, progress=lambda d, t: None)
        upload_cpu, upload_wall = cpu_s() - cpu, time.perf_counter() - wall
        print(
            f"run {run}: archive {packed_cpu:.2f} CPU-s {packed_wall:.1f} s wall; "
            f"upload {upload_cpu:.2f} CPU-s {upload_wall:.1f} s wall; "
            f"{archive.size} bytes, {len(archive.manifest.files)} files, "
            f"sha256 {archive.sha256}"
        )


if __name__ == "__main__":
    main()

"""Housekeeping: finished jobs' folders are removed once they are older than a retention time.

Each service names the folder that holds one sub-folder per job and says which jobs are finished;
a background thread sweeps at an interval. A folder's age is its modification time, which every
atomic write into it (progress, checkpoints) refreshes, so a live job's folder never looks old.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class FolderSweeper:
    """Removes ``root/<job_id>`` folders of finished jobs (or other leftovers ``may_remove``
    names, such as an upload's staging) older than ``retention_seconds``."""

    def __init__(
        self,
        root: Path,
        retention_seconds: float,
        may_remove: Callable[[str], bool],
        interval_seconds: float,
    ) -> None:
        self._root = root
        self._retention = retention_seconds
        self._may_remove = may_remove
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self, now: float | None = None) -> list[str]:
        """One pass; returns the job ids whose folders were removed."""
        if not self._root.is_dir():
            return []
        cutoff = (time.time() if now is None else now) - self._retention
        removed = []
        for folder in sorted(p for p in self._root.iterdir() if p.is_dir()):
            try:
                old = folder.stat().st_mtime < cutoff
                if old and self._may_remove(folder.name):
                    shutil.rmtree(folder)
                    removed.append(folder.name)
            except Exception:  # a sweep must never stop the service; the next pass retries
                log.exception("could not sweep a job folder", extra={"path": str(folder)})
        if removed:
            log.info("removed finished job folders", extra={"count": len(removed)})
        return removed

    def sweep_leftovers(self) -> list[str]:
        """One pass that removes every removable folder whatever its age: at a service's start
        nothing in the root is live yet, so all of it is a previous process's leftover."""
        return self.sweep(now=math.inf)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sweep()
            self._stop.wait(self._interval)

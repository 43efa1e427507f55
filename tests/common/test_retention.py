"""Retention: finished jobs' folders go once older than the retention time; others stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mistudio_common.retention import FolderSweeper

DAY = 86400.0


def job_folder(root: Path, job_id: str, age_seconds: float) -> Path:
    folder = root / job_id
    folder.mkdir(parents=True)
    (folder / "progress.binpb").write_bytes(b"x")
    stamp = time.time() - age_seconds
    os.utime(folder, (stamp, stamp))
    return folder


def test_only_finished_folders_older_than_the_retention_are_removed(tmp_path: Path) -> None:
    old_done = job_folder(tmp_path, "old-done", 2 * DAY)
    new_done = job_folder(tmp_path, "new-done", 60)
    old_running = job_folder(tmp_path, "old-running", 2 * DAY)
    sweeper = FolderSweeper(tmp_path, DAY, lambda job_id: job_id.endswith("done"), 600)
    assert sweeper.sweep() == ["old-done"]
    assert not old_done.exists() and new_done.is_dir() and old_running.is_dir()


def test_a_failing_check_keeps_the_folder_and_the_sweep_goes_on(tmp_path: Path) -> None:
    def may_remove(job_id: str) -> bool:
        if job_id == "a":
            raise ConnectionError("store unreachable")
        return True

    job_folder(tmp_path, "a", 2 * DAY)
    job_folder(tmp_path, "b", 2 * DAY)
    assert FolderSweeper(tmp_path, DAY, may_remove, 600).sweep() == ["b"]
    assert (tmp_path / "a").is_dir()


def test_a_missing_root_is_nothing_to_sweep(tmp_path: Path) -> None:
    assert FolderSweeper(tmp_path / "none", DAY, lambda _: True, 600).sweep() == []

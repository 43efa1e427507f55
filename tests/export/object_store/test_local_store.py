"""LocalObjectStore: atomic writes and file:// links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mistudio_common.errors import Cancelled, NotFound
from mistudio_export.object_store import LocalObjectStore

from .conftest import write


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_an_object_is_invisible_while_it_is_being_written(tmp_path: Path, big_file: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    seen_mid_write: list[bool] = []

    def look(done: int, total: int) -> None:
        if done < total:
            seen_mid_write.append(store.exists("k/big.bin") or (store.root / "k/big.bin").exists())

    store.put_file("k/big.bin", big_file, progress=look)

    assert seen_mid_write and not any(seen_mid_write)
    assert store.get_range("k/big.bin").read_all() == big_file.read_bytes()


def test_a_cancelled_write_leaves_no_partial_file(tmp_path: Path, big_file: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")

    def cancel_halfway(done: int, total: int) -> None:
        if done > total // 2:
            raise Cancelled("export cancelled")

    with pytest.raises(Cancelled):
        store.put_file("k/big.bin", big_file, progress=cancel_halfway)

    assert not store.exists("k/big.bin")
    assert files_under(store.root) == []
    assert list(store.list()) == []


def test_a_failed_overwrite_keeps_the_previous_object(tmp_path: Path, big_file: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put_file("k/a.bin", write(tmp_path, "old.bin", b"old"))

    def fail(done: int, total: int) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.put_file("k/a.bin", big_file, progress=fail)

    assert store.get_range("k/a.bin").read_all() == b"old"
    assert files_under(store.root) == ["k/a.bin"]


def test_uploading_a_missing_file_is_not_found(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")

    with pytest.raises(NotFound):
        store.put_file("k/a.bin", tmp_path / "missing.zip")


def test_presigned_url_is_a_file_url_to_the_object(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put_file("k/a.bin", write(tmp_path, "a.bin", b"x"))

    url, _ = store.presigned_get_url("k/a.bin", 60)

    assert url == (store.root / "k" / "a.bin").as_uri()


def test_deleting_the_last_object_prunes_its_empty_folders(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put_file("exports/job/a.bin", write(tmp_path, "a.bin", b"x"))

    store.delete("exports/job/a.bin")

    assert [p.name for p in store.root.iterdir() if p.name != ".tmp"] == []


def test_a_temporary_file_a_crashed_write_left_is_removed_once_old_enough(
    tmp_path: Path,
) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put_file("kept/a.bin", write(tmp_path, "a.bin", b"kept"))
    (store.root / ".tmp" / "put-crashed").write_bytes(b"half an archive")
    os.utime(store.root / ".tmp" / "put-crashed", (1000.0, 1000.0))
    (store.root / ".tmp" / "put-under-way").write_bytes(b"being written")
    assert store.remove_unfinished(before=2000.0) == 1
    assert files_under(store.root) == [".tmp/put-under-way", "kept/a.bin"]

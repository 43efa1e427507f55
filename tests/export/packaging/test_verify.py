"""verify_archive on real tampered ZIPs: corrupted, changed, missing and extra files."""

from __future__ import annotations

import zipfile
from pathlib import Path

from mistudio_export.packaging import MANIFEST_NAME, Compression, build_archive, verify_archive

from .conftest import FILES

TARGET = "saelens/cfg.json"


def build(staging: Path, tmp_path: Path) -> Path:
    return build_archive(staging, tmp_path / "a.zip", compression=Compression.STORED).path


def rewrite(src: Path, dst: Path, replace: dict[str, bytes | None]) -> Path:
    """Copies a ZIP entry by entry; a name mapped to None is dropped, to bytes is replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)
    return dst


def test_flipped_bytes_inside_the_zip_are_reported_corrupt(staging: Path, tmp_path: Path) -> None:
    path = build(staging, tmp_path)
    raw = bytearray(path.read_bytes())
    at = raw.find(FILES[TARGET])
    raw[at + 3] ^= 0xFF
    path.write_bytes(bytes(raw))

    report = verify_archive(path)

    assert not report.ok
    assert [c.path for c in report.corrupt] == [TARGET]
    assert report.checked == len(FILES) - 1


def test_a_file_changed_after_packing_is_reported_corrupt(staging: Path, tmp_path: Path) -> None:
    edited = rewrite(build(staging, tmp_path), tmp_path / "b.zip", {TARGET: b'{"d_in": 65}'})

    report = verify_archive(edited)

    assert [c.path for c in report.corrupt] == [TARGET]
    assert not report.missing and not report.extra


def test_a_same_size_edit_is_caught_by_the_hash(staging: Path, tmp_path: Path) -> None:
    same_size = FILES[TARGET].replace(b"64", b"65")
    edited = rewrite(build(staging, tmp_path), tmp_path / "b.zip", {TARGET: same_size})

    (corrupt,) = verify_archive(edited).corrupt

    assert "SHA-256" in corrupt.reason


def test_a_removed_file_is_reported_missing(staging: Path, tmp_path: Path) -> None:
    trimmed = rewrite(build(staging, tmp_path), tmp_path / "b.zip", {TARGET: None})

    report = verify_archive(trimmed)

    assert report.missing == (TARGET,)
    assert report.checked == len(FILES) - 1


def test_an_added_file_is_reported_extra(staging: Path, tmp_path: Path) -> None:
    path = build(staging, tmp_path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("saelens/backdoor.py", b"print('hi')")

    report = verify_archive(path)

    assert report.extra == ("saelens/backdoor.py",)
    assert not report.ok


def test_an_archive_without_a_manifest_is_unreadable(staging: Path, tmp_path: Path) -> None:
    stripped = rewrite(build(staging, tmp_path), tmp_path / "b.zip", {MANIFEST_NAME: None})

    report = verify_archive(stripped)

    assert not report.ok and MANIFEST_NAME in report.unreadable


def test_a_garbled_manifest_is_unreadable(staging: Path, tmp_path: Path) -> None:
    garbled = rewrite(build(staging, tmp_path), tmp_path / "b.zip", {MANIFEST_NAME: b"{nope"})

    assert "not a valid manifest" in verify_archive(garbled).unreadable


def test_a_file_that_is_not_a_zip_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "a.zip"
    path.write_bytes(b"this is not a zip")

    report = verify_archive(path)

    assert not report.ok
    assert report.lines() == [f"unreadable: {report.unreadable}"]


def test_a_truncated_download_is_not_ok(staging: Path, tmp_path: Path) -> None:
    path = build(staging, tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    assert not verify_archive(path).ok

"""`validate` and the validator on hostile archives and folders: limits before extraction,
bounded JSON, nothing read or written outside the target, and always a report."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mistudio_export.limits import MAX_JSON_DEPTH, ArchiveLimits
from mistudio_export.packaging.safe_extract import check_limits, safe_extract
from mistudio_export.validation import Problem, validate_export
from mistudio_export.validation.archives import validate_zip

from tests.export.validation.files import prd_export


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and mtime: compared before and after."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def zip_of(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def export_entries(tmp_path: Path) -> dict[str, bytes]:
    folder = prd_export(tmp_path / "export")
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def codes(problems: list[Problem]) -> set[str]:
    return {p.code for p in problems}


def test_zip_bomb_is_refused_before_anything_is_extracted(tmp_path: Path) -> None:
    bomb = zip_of(tmp_path / "bomb.zip", {"features/0.json": bytes(64 << 20)})
    checked = validate_zip(bomb, tmp_path / "out")
    assert codes(checked.report.problems) == {"ARCHIVE_LIMIT"}
    assert "zip bomb" in checked.report.problems[0].message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("limits", "why"),
    [
        (ArchiveLimits(max_total_bytes=1000), "expands to"),
        (ArchiveLimits(max_entry_bytes=600), "the limit per file"),
        (ArchiveLimits(max_entries=2), "entries"),
    ],
)
def test_archive_over_a_size_limit_is_refused(
    tmp_path: Path, limits: ArchiveLimits, why: str
) -> None:
    archive = zip_of(
        tmp_path / "a.zip", {f"{i}.json": b"[" + b"0," * 400 + b"0]" for i in range(3)}
    )
    extraction = safe_extract(archive, tmp_path / "out", limits)
    assert why in extraction.refused
    assert not (tmp_path / "out").exists()


def test_an_ordinary_export_is_within_the_limits(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "ok.zip", export_entries(tmp_path))
    with zipfile.ZipFile(archive) as zf:
        assert check_limits(zf) == ""


def test_deeply_nested_json_is_reported_not_a_traceback(tmp_path: Path) -> None:
    folder = prd_export(tmp_path / "export")
    (folder / "features" / "0.json").write_text("[" * 200_000 + "]" * 200_000)
    (folder / "features" / "1.json").write_text(
        "[" * (MAX_JSON_DEPTH + 5) + "]" * (MAX_JSON_DEPTH + 5)
    )
    report = validate_export(folder)
    nested = [p for p in report.problems if p.code == "INVALID_JSON"]
    assert {p.file for p in nested} == {"features/0.json", "features/1.json"}
    assert all("nested deeper" in p.message for p in nested)


def test_a_hundred_thousand_digit_integer_is_reported_not_a_traceback(tmp_path: Path) -> None:
    folder = prd_export(tmp_path / "export")
    (folder / "features" / "0.json").write_text('{"feature_index": ' + "7" * 100_000 + "}")
    report = validate_export(folder)
    found = [p for p in report.problems if p.code == "INVALID_JSON"]
    assert [p.file for p in found] == ["features/0.json"]
    assert "7" * 100 not in found[0].message


def test_symlinked_folder_entry_is_skipped_and_reported(tmp_path: Path) -> None:
    archive = tmp_path / "links.zip"
    entries = export_entries(tmp_path)
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("features")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc")
        for name, data in entries.items():
            zf.writestr(name, data)
    checked = validate_zip(archive, tmp_path / "out")
    unsafe = [p for p in checked.report.problems if p.code == "UNSAFE_PATH"]
    assert [p.file for p in unsafe] == ["features"]
    assert not (tmp_path / "out" / "features").is_symlink()


def test_entry_below_a_file_entry_is_skipped_not_a_crash(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "clash.zip", {"features": b"x", "features/0.json": b"{}"})
    extraction = safe_extract(archive, tmp_path / "out")
    assert [name for name, _ in extraction.skipped] == ["features/0.json"]


@pytest.mark.parametrize(
    "name", ["../escaped.json", "/tmp/absolute-escape.json", "a/../../up.json"]
)
def test_names_leading_out_of_the_target_are_not_written(tmp_path: Path, name: str) -> None:
    archive = zip_of(tmp_path / "slip.zip", {name: b"{}", "metadata.json": b"{}"})
    before = tree(tmp_path)
    extraction = safe_extract(archive, tmp_path / "deep" / "out")
    assert [skipped for skipped, _ in extraction.skipped] == [name]
    assert not Path("/tmp/absolute-escape.json").exists()
    after = tree(tmp_path)
    assert set(after) - set(before) == {"deep/out/metadata.json"}


def test_auto_fix_never_follows_a_symlinked_folder_out_of_the_target(tmp_path: Path) -> None:
    """A `features/` link to a folder outside: the file there (fixable) is neither read nor
    rewritten, by the validator or the `validate --auto-fix` command."""
    folder = prd_export(tmp_path / "export")
    outside = tmp_path / "outside"
    (folder / "features").rename(outside)
    victim = outside / "0.json"
    victim.write_text(
        victim.read_text().replace('"max_activation":', '"max_activation": NaN, "x":', 1)
    )
    (folder / "features").symlink_to(outside, target_is_directory=True)
    before = tree(outside)
    report = validate_export(folder, fix=True)
    assert "UNSAFE_PATH" in codes(report.problems)
    assert not report.changes
    result = subprocess.run(
        [sys.executable, "-m", "mistudio_cli", "validate", str(folder), "--auto-fix"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "UNSAFE_PATH" in result.stdout
    assert tree(outside) == before


def test_oversized_file_in_a_folder_is_reported_unread(tmp_path: Path) -> None:
    folder = prd_export(tmp_path / "export")
    huge = folder / "features" / "0.json"
    with huge.open("r+b") as f:
        f.truncate(ArchiveLimits().max_entry_bytes + 1)  # sparse: no disk, no time
    report = validate_export(folder)
    assert [p.file for p in report.problems if p.code == "FILE_TOO_LARGE"] == ["features/0.json"]


def test_a_fifo_in_a_folder_is_not_read(tmp_path: Path) -> None:
    folder = prd_export(tmp_path / "export")
    (folder / "features" / "0.json").unlink()
    os.mkfifo(folder / "features" / "0.json")
    report = validate_export(folder)
    assert [p.file for p in report.problems if p.code == "UNSAFE_PATH"] == ["features/0.json"]


def test_json_in_an_archive_keeps_its_structure_checks(tmp_path: Path) -> None:
    entries = export_entries(tmp_path)
    entries["features/0.json"] = json.dumps({"feature_index": 0}).encode()
    checked = validate_zip(zip_of(tmp_path / "a.zip", entries), tmp_path / "out")
    assert not checked.report.ok and "ARCHIVE_LIMIT" not in codes(checked.report.problems)

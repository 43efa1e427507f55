"""build_archive: a deterministic ZIP that carries its own manifest."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from isal import isal_zlib
from mistudio_common.errors import Cancelled, FailedPrecondition, InvalidArgument
from mistudio_export import deflate
from mistudio_export.packaging import (
    ARCHIVE_FORMAT_VERSION,
    MANIFEST_NAME,
    Compression,
    archive,
    build_archive,
    verify_archive,
)
from mistudio_export.packaging.archive import PROGRESS_STEPS
from mistudio_export.packaging.manifest import CHUNK_SIZE, Manifest, ManifestEntry

from .conftest import FILES, make_staging


def test_same_folder_gives_byte_identical_archives(staging: Path, tmp_path: Path) -> None:
    first = build_archive(staging, tmp_path / "one.zip")
    second = build_archive(staging, tmp_path / "two.zip")

    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.sha256 == second.sha256


@pytest.mark.parametrize("compression", list(Compression))
def test_the_reported_sha256_is_the_archive_files(
    staging: Path, tmp_path: Path, compression: Compression
) -> None:
    built = build_archive(staging, tmp_path / "a.zip", compression=compression)

    assert built.sha256 == hashlib.sha256(built.path.read_bytes()).hexdigest()
    assert built.size == built.path.stat().st_size


@pytest.mark.parametrize("compression", list(Compression))
def test_file_order_times_and_permissions_of_the_folder_do_not_matter(
    tmp_path: Path, compression: Compression
) -> None:
    a = make_staging(tmp_path / "a")
    b = make_staging(tmp_path / "b", names=list(reversed(FILES)))
    for i, path in enumerate(sorted(p for p in b.rglob("*") if p.is_file())):
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
        path.chmod(0o600 if i % 2 else 0o755)

    one = build_archive(a, tmp_path / "a.zip", compression=compression)
    two = build_archive(b, tmp_path / "b.zip", compression=compression)

    assert one.path.read_bytes() == two.path.read_bytes()


def test_entries_are_manifest_first_then_sorted_with_fixed_metadata(
    staging: Path, tmp_path: Path
) -> None:
    result = build_archive(staging, tmp_path / "a.zip")

    with zipfile.ZipFile(result.path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == [MANIFEST_NAME, *sorted(FILES)]
    for info in infos:
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == 0o100644
        assert info.extra == b""
        assert info.compress_type == zipfile.ZIP_DEFLATED


def test_stored_archives_do_not_compress(staging: Path, tmp_path: Path) -> None:
    result = build_archive(staging, tmp_path / "a.zip", compression=Compression.STORED)

    with zipfile.ZipFile(result.path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


def test_archive_contents_match_the_folder(staging: Path, tmp_path: Path) -> None:
    result = build_archive(staging, tmp_path / "a.zip")

    with zipfile.ZipFile(result.path) as zf:
        for name, data in FILES.items():
            assert zf.read(name) == data


def test_manifest_lists_every_file_with_size_and_sha256(staging: Path, tmp_path: Path) -> None:
    result = build_archive(staging, tmp_path / "a.zip")

    with zipfile.ZipFile(result.path) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))
    assert manifest["archive_format_version"] == ARCHIVE_FORMAT_VERSION
    assert [f["path"] for f in manifest["files"]] == sorted(FILES)
    weights = next(f for f in manifest["files"] if f["path"].endswith(".safetensors"))
    assert weights["size"] == len(FILES["saelens/sae_weights.safetensors"])
    assert len(weights["sha256"]) == 64
    assert (staging / MANIFEST_NAME).read_bytes() == result.manifest.to_json()


@pytest.mark.parametrize(
    "paths", [[], ["metadata.json"], ["z.json", 'é/"q\\.json', "a\u2028b.json", "features/1.json"]]
)
def test_manifest_bytes_are_canonical_json_written_entry_by_entry(paths: list[str]) -> None:
    manifest = Manifest(tuple(ManifestEntry(p, n, f"{n:064x}") for n, p in enumerate(paths)))
    body = {
        "archive_format_version": ARCHIVE_FORMAT_VERSION,
        "files": [
            {"path": p, "sha256": f"{n:064x}", "size": n}
            for n, p in sorted(enumerate(paths), key=lambda entry: entry[1])
        ],
    }
    canonical = json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert manifest.to_json() == canonical.encode()


def test_a_fresh_archive_verifies(staging: Path, tmp_path: Path) -> None:
    report = verify_archive(build_archive(staging, tmp_path / "a.zip").path)

    assert report.ok
    assert report.checked == len(FILES)


def test_progress_reaches_the_total_and_a_cancel_leaves_no_archive(
    staging: Path, tmp_path: Path
) -> None:
    seen: list[tuple[int, int]] = []
    build_archive(staging, tmp_path / "a.zip", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == sum(len(d) for d in FILES.values())

    def cancel_while_zipping(done: int, total: int) -> None:
        if done > 1024:
            raise Cancelled("export cancelled")

    with pytest.raises(Cancelled):
        build_archive(staging, tmp_path / "b.zip", progress=cancel_while_zipping)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["a.zip"]


def test_progress_comes_in_steps_of_the_archive_not_per_file(tmp_path: Path) -> None:
    staging = tmp_path / "many"
    staging.mkdir()
    for n in range(3 * PROGRESS_STEPS):
        (staging / f"{n}.json").write_bytes(b"[%d]" % n)
    seen: list[tuple[int, int]] = []
    build_archive(staging, tmp_path / "a.zip", progress=lambda d, t: seen.append((d, t)))
    assert len(seen) <= PROGRESS_STEPS + 1
    assert seen[-1][0] == seen[-1][1]


@pytest.mark.parametrize("change", [b" more", b""], ids=["grows", "is-rewritten-shorter"])
def test_a_file_still_being_written_when_listed_fails_the_archive_naming_it(
    staging: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: bytes
) -> None:
    listed = archive.staged_files
    path = staging / "saelens" / "cfg.json"

    def listed_then_written(folder: Path) -> list[tuple[str, int]]:
        files = listed(folder)
        path.write_bytes(path.read_bytes() + change if change else b"{}")
        return files

    monkeypatch.setattr(archive, "staged_files", listed_then_written)
    with pytest.raises(FailedPrecondition, match=r"saelens/cfg\.json changed while"):
        build_archive(staging, tmp_path / "a.zip")
    assert list(tmp_path.glob("a.zip*")) == []


def test_an_archive_inside_the_staging_folder_is_refused(staging: Path) -> None:
    with pytest.raises(InvalidArgument):
        build_archive(staging, staging / "export.zip")


def test_a_symlink_in_the_staging_folder_is_refused(staging: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("not part of the export")
    (staging / "link.txt").symlink_to(tmp_path / "secret.txt")

    with pytest.raises(InvalidArgument):
        build_archive(staging, tmp_path / "a.zip")


def test_gzip_files_are_stored_and_json_is_deflated(staging: Path, tmp_path: Path) -> None:
    rows = staging / "neuronpedia-importer" / "features" / "batch-0.jsonl.gz"
    rows.parent.mkdir(parents=True)
    rows.write_bytes(gzip.compress(b'{"index": "0"}\n' * 100, mtime=0))
    archive = build_archive(staging, tmp_path / "out.zip")

    with zipfile.ZipFile(archive.path) as zf:
        methods = {i.filename: i.compress_type for i in zf.infolist()}
        assert zf.read("neuronpedia-importer/features/batch-0.jsonl.gz") == rows.read_bytes()
    assert methods["neuronpedia-importer/features/batch-0.jsonl.gz"] == zipfile.ZIP_STORED
    assert methods["prefill.json"] == zipfile.ZIP_DEFLATED
    assert verify_archive(archive.path).ok


def _zipfile_writes(
    staging: Path, zip_path: Path, names: list[str], monkeypatch: pytest.MonkeyPatch
) -> bytes:
    """The archive ZipFile writes itself from the same folder: each member through
    ``ZipFile.open(info, "w")`` with the export's deflater, fed the same chunks (ISA-L's output
    depends on them), and the same metadata."""
    monkeypatch.setattr(
        zipfile,
        "_get_compressor",
        lambda kind, level=None: deflate.raw_deflater() if kind == zipfile.ZIP_DEFLATED else None,
    )
    with zipfile.ZipFile(zip_path, "w", allowZip64=True) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = (
                zipfile.ZIP_STORED if name.endswith(".gz") else zipfile.ZIP_DEFLATED
            )
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            info.file_size = (staging / name).stat().st_size
            data = (staging / name).read_bytes()
            with zf.open(info, "w") as dst:
                for at in range(0, len(data), CHUNK_SIZE):
                    dst.write(data[at : at + CHUNK_SIZE])
    return zip_path.read_bytes()


def test_members_packed_on_every_core_give_the_bytes_zipfile_writes(
    staging: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = staging / "neuronpedia-importer" / "batch-0.jsonl.gz"
    rows.parent.mkdir(parents=True)
    rows.write_bytes(gzip.compress(b'{"index": "0"}\n' * 100_000, mtime=0))
    (staging / "empty.json").write_bytes(b"")
    archive = build_archive(staging, tmp_path / "ours.zip")
    names = [MANIFEST_NAME, *(entry.path for entry in archive.manifest.files)]

    theirs = _zipfile_writes(staging, tmp_path / "theirs.zip", names, monkeypatch)
    assert archive.path.read_bytes() == theirs


def test_how_files_are_shared_among_the_threads_does_not_change_the_bytes(
    staging: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    together = build_archive(staging, tmp_path / "together.zip")
    monkeypatch.setattr(archive, "BATCH_BYTES", 1)  # one task a file
    apart = build_archive(staging, tmp_path / "apart.zip")

    assert apart.path.read_bytes() == together.path.read_bytes()
    assert apart.manifest == together.manifest


def _member_bytes(zip_path: Path, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes as the archive holds them (deflated or stored), past its local header."""
    with open(zip_path, "rb") as f:
        f.seek(info.header_offset)
        name_length, extra_length = struct.unpack("<HH", f.read(30)[26:30])
        f.seek(name_length + extra_length, os.SEEK_CUR)
        return f.read(info.compress_size)


def _raw_deflate(compressor: isal_zlib.Compress | zlib._Compress, data: bytes) -> bytes:
    """``data`` deflated in the chunks the archive reads it in."""
    chunks = [data[at : at + CHUNK_SIZE] for at in range(0, len(data), CHUNK_SIZE)]
    return b"".join(map(compressor.compress, chunks)) + compressor.flush()


def test_deflated_members_are_isa_l_s_deflate_not_zlib_s(staging: Path, tmp_path: Path) -> None:
    document = staging / "neuronpedia-json" / "features" / "1.json"
    document.write_bytes(json.dumps({"values": [i / 7 for i in range(2000)]}).encode())
    archive = build_archive(staging, tmp_path / "a.zip")
    with zipfile.ZipFile(archive.path) as zf:
        members = {i.filename: i for i in zf.infolist() if i.compress_type == zipfile.ZIP_DEFLATED}

    assert set(members) == {MANIFEST_NAME, *FILES, "neuronpedia-json/features/1.json"}
    for name, info in members.items():
        isa_l = isal_zlib.compressobj(deflate.LEVEL, isal_zlib.DEFLATED, -15)
        expected = _raw_deflate(isa_l, (staging / name).read_bytes())
        assert _member_bytes(archive.path, info) == expected, name
    zlib_level_1 = zlib.compressobj(1, zlib.DEFLATED, -15)
    deflated_document = _member_bytes(archive.path, members["neuronpedia-json/features/1.json"])
    assert deflated_document != _raw_deflate(zlib_level_1, document.read_bytes())
